//! Sending to other servers: to-device messages both ways between two of our servers; a
//! server that is down gets everything queued for it once it is back, in order and once,
//! whether its backoff runs out or it shows up by sending a transaction; a restart of the
//! sender loses nothing queued; transactions carry at most 50 PDUs and 100 EDUs and keep
//! their id across retries; typing, receipts, presence, device lists and cross-signing keys
//! go to the servers that share the room or the user; the fan-out hands one event to every
//! server of a room from one outbox row.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    common::{User, wait_until},
    rooms::{create_room, send_text},
    sync::sync,
    testbed::{Ca, FakeServer, FedServer, inject_member},
};

/// Retries after 100 ms, doubling up to a second.
const FAST: &[&str] = &["sender_retry_backoff_min_ms=100", "sender_retry_backoff_limit=1"];
/// How long a test waits for something to cross.
const CROSSING: Duration = Duration::from_secs(30);

async fn send_to_device(
    server: &FedServer,
    from: &User,
    txn: &str,
    to: &str,
    device: &str,
    body: &str,
) {
    let (status, response) = server
        .server
        .put_as(
            from,
            &format!("/_matrix/client/v3/sendToDevice/m.test/{txn}"),
            json!({"messages": {to: {device: {"body": body}}}}),
        )
        .await;
    assert_eq!(status, 200, "{response}");
}

/// The bodies of the to-device messages waiting for `user`'s device.
async fn to_device_bodies(server: &FedServer, user: &User) -> Vec<String> {
    let body = sync(&server.server, user, None, "").await;
    body["to_device"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|event| event["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until `user` has `expected` waiting (in that order); fails with what is there.
async fn expect_to_device(server: &FedServer, user: &User, expected: &[&str]) {
    let arrived = wait_until(CROSSING, || async {
        to_device_bodies(server, user).await.len() >= expected.len()
    })
    .await;
    let bodies = to_device_bodies(server, user).await;
    assert!(arrived, "only {bodies:?} arrived");
    assert_eq!(bodies, expected);
}

/// Waits until `server`'s queue for `destination` is empty, nothing is in flight and its
/// sender has noted it.
async fn wait_sent(server: &FedServer, destination: &str) {
    let services = server.services();
    let destination: ruma::OwnedServerName = destination.try_into().expect("name");
    let sent = wait_until(CROSSING, || {
        let services = std::sync::Arc::clone(&services);
        let destination = destination.clone();
        async move {
            let sender = &services.federation.sender;
            let settled = sender.statuses().get(&destination).is_none_or(|status| {
                status.queued == 0
                    && status.phase == tuwunel::federation::sender::status::Phase::Idle
            });
            settled
                && sender
                    .destinations_with_work()
                    .is_ok_and(|servers| !servers.contains(&destination))
        }
    })
    .await;
    assert!(sent, "{destination} still has work queued");
}

/// Waits until `server` has failed to reach `destination` at least `failures` times.
async fn wait_failures(server: &FedServer, destination: &str, failures: u64) {
    let services = server.services();
    let destination: ruma::OwnedServerName = destination.try_into().expect("name");
    let failed = wait_until(CROSSING, || {
        let services = std::sync::Arc::clone(&services);
        let destination = destination.clone();
        async move {
            services
                .federation
                .sender
                .statuses()
                .get(&destination)
                .is_some_and(|status| status.failed >= failures)
        }
    })
    .await;
    assert!(failed, "{destination} was not tried {failures} times");
}

#[tokio::test]
async fn to_device_messages_cross_in_both_directions_once() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &[FAST[0], FAST[1], "actor_idle_timeout_s=1"]).await;
    let b = FedServer::start(&ca, FAST).await;
    let alice = a.server.register("alice", "pw").await;
    let bob = b.server.register("bob", "pw").await;

    send_to_device(&a, &alice, "t1", &bob.user_id, &bob.device_id, "hello bob").await;
    expect_to_device(&b, &bob, &["hello bob"]).await;
    // The client retries its request: nothing goes out twice.
    send_to_device(&a, &alice, "t1", &bob.user_id, &bob.device_id, "hello bob").await;
    wait_sent(&a, &b.name).await;
    assert_eq!(to_device_bodies(&b, &bob).await, vec!["hello bob"]);
    let events = sync(&b.server, &bob, None, "").await;
    assert_eq!(events["to_device"]["events"][0]["sender"], alice.user_id.as_str());
    assert_eq!(events["to_device"]["events"][0]["type"], "m.test");
    // With its queue empty, A's sender for B passivates.
    let services = a.services();
    let b_name: ruma::OwnedServerName = b.name.as_str().try_into().expect("name");
    let passivated = wait_until(CROSSING, || async {
        !services.federation.sender.destinations.is_live(&b_name)
    })
    .await;
    assert!(passivated, "an idle destination actor stays");

    // And back, to all of Alice's devices.
    send_to_device(&b, &bob, "t1", &alice.user_id, "*", "hello alice").await;
    expect_to_device(&a, &alice, &["hello alice"]).await;
}

#[tokio::test]
async fn a_server_that_was_down_gets_everything_once_it_is_back_in_order_and_once() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, FAST).await;
    let mut b = FedServer::start(&ca, FAST).await;
    let alice = a.server.register("alice", "pw").await;
    let bob = b.server.register("bob", "pw").await;
    // A learns B's keys and B A's while both are up.
    send_to_device(&a, &alice, "warmup", &bob.user_id, &bob.device_id, "first").await;
    expect_to_device(&b, &bob, &["first"]).await;

    b.stop().await;
    for index in 0..5 {
        send_to_device(
            &a,
            &alice,
            &format!("t{index}"),
            &bob.user_id,
            &bob.device_id,
            &format!("m{index}"),
        )
        .await;
    }
    // A tries, fails, and keeps retrying as its backoff runs out.
    wait_failures(&a, &b.name, 3).await;
    b.restart().await;
    expect_to_device(&b, &bob, &["first", "m0", "m1", "m2", "m3", "m4"]).await;
    wait_sent(&a, &b.name).await;
    assert_eq!(to_device_bodies(&b, &bob).await.len(), 6, "each once");
}

#[tokio::test]
async fn a_server_that_sends_a_transaction_is_retried_at_once() {
    let ca = Ca::new();
    // A minute's backoff: only the transaction from B can bring A back to it in time.
    let slow = ["sender_retry_backoff_min_ms=60000"];
    let a = FedServer::start(&ca, &slow).await;
    let mut b = FedServer::start(&ca, FAST).await;
    let alice = a.server.register("alice", "pw").await;
    let bob = b.server.register("bob", "pw").await;
    send_to_device(&a, &alice, "warmup", &bob.user_id, &bob.device_id, "first").await;
    expect_to_device(&b, &bob, &["first"]).await;

    b.stop().await;
    send_to_device(&a, &alice, "t1", &bob.user_id, &bob.device_id, "while you were away").await;
    wait_failures(&a, &b.name, 1).await;
    b.restart().await;
    // B sends A something: A learns B is back and sends what it queued right away.
    send_to_device(&b, &bob, "t1", &alice.user_id, &alice.device_id, "I am back").await;
    expect_to_device(&a, &alice, &["I am back"]).await;
    expect_to_device(&b, &bob, &["first", "while you were away"]).await;
}

#[tokio::test]
async fn a_restart_of_the_sender_loses_nothing_queued() {
    let ca = Ca::new();
    let mut a = FedServer::start(&ca, FAST).await;
    let mut b = FedServer::start(&ca, FAST).await;
    let alice = a.server.register("alice", "pw").await;
    let bob = b.server.register("bob", "pw").await;
    send_to_device(&a, &alice, "warmup", &bob.user_id, &bob.device_id, "first").await;
    expect_to_device(&b, &bob, &["first"]).await;

    b.stop().await;
    for index in 0..3 {
        send_to_device(
            &a,
            &alice,
            &format!("t{index}"),
            &bob.user_id,
            &bob.device_id,
            &format!("m{index}"),
        )
        .await;
    }
    wait_failures(&a, &b.name, 1).await;
    // A restarts with its queue for B, and resumes it by itself (startup_netburst).
    a.restart().await;
    b.restart().await;
    expect_to_device(&b, &bob, &["first", "m0", "m1", "m2"]).await;
    send_to_device(&a, &alice, "t3", &bob.user_id, &bob.device_id, "m3").await;
    expect_to_device(&b, &bob, &["first", "m0", "m1", "m2", "m3"]).await;
    wait_sent(&a, &b.name).await;
    assert_eq!(to_device_bodies(&b, &bob).await.len(), 5, "each once");
}

/// The bodies of the messages a PDU list carries, in order.
fn pdu_bodies(pdus: &[Value]) -> Vec<String> {
    pdus.iter().filter_map(|pdu| pdu["content"]["body"].as_str().map(str::to_owned)).collect()
}

#[tokio::test]
async fn transactions_hold_at_most_50_pdus_and_100_edus_and_keep_their_id_across_retries() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, FAST).await;
    let fake = FakeServer::start(&ca).await;
    let alice = a.server.register("alice", "pw").await;
    let room = create_room(&a.server, &alice, json!({"preset": "public_chat"})).await;
    let friend = fake.user_id("friend");
    inject_member(&a.server, &room, &friend, "join").await;

    fake.fail_with(Some(503));
    for index in 0..120 {
        send_text(&a.server, &alice, &room, &format!("p{index}"), &format!("p{index}")).await;
    }
    for index in 0..150 {
        send_to_device(&a, &alice, &format!("e{index}"), &friend, "DEVICE", &format!("e{index}"))
            .await;
    }
    // The first transaction fails and is tried again as it was.
    let retried =
        wait_until(CROSSING, || async { fake.state.attempts.lock().expect("attempts").len() >= 3 })
            .await;
    assert!(retried);
    let attempts = fake.state.attempts.lock().expect("attempts").clone();
    assert_eq!(attempts[1], attempts[0], "same id, same content: {attempts:?}");
    fake.fail_with(None);

    let all_in = wait_until(CROSSING, || async {
        let received = fake.received();
        let pdus: usize =
            received.iter().map(|r| r.body["pdus"].as_array().map_or(0, Vec::len)).sum();
        let edus: usize =
            received.iter().map(|r| r.body["edus"].as_array().map_or(0, Vec::len)).sum();
        pdus >= 120 && edus >= 150
    })
    .await;
    let received = fake.received();
    assert!(all_in, "{} transactions", received.len());
    assert_eq!(
        received[0].txn_id, attempts[0].0,
        "the failed transaction went through under its id"
    );
    let mut ids: Vec<&str> = received.iter().map(|r| r.txn_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), received.len(), "every transaction has an id of its own");
    let mut pdus = Vec::new();
    let mut edus = Vec::new();
    for transaction in &received {
        let carried = transaction.body["pdus"].as_array().cloned().unwrap_or_default();
        let edus_carried = transaction.body["edus"].as_array().cloned().unwrap_or_default();
        assert!(
            carried.len() <= 50 && edus_carried.len() <= 100,
            "{} and {}",
            carried.len(),
            edus_carried.len()
        );
        assert_eq!(transaction.body["origin"], a.name.as_str());
        assert!(
            transaction.authorization.starts_with("X-Matrix "),
            "{}",
            transaction.authorization
        );
        pdus.extend(carried);
        edus.extend(edus_carried);
    }
    let expected: Vec<String> = (0..120).map(|index| format!("p{index}")).collect();
    assert_eq!(pdu_bodies(&pdus), expected, "every event once, in order");
    assert!(pdus.iter().all(|pdu| pdu.get("event_id").is_none() && pdu.get("unsigned").is_none()));
    let bodies: Vec<String> = edus
        .iter()
        .filter_map(|edu| {
            edu["content"]["messages"][&friend]["DEVICE"]["body"].as_str().map(str::to_owned)
        })
        .collect();
    let expected: Vec<String> = (0..150).map(|index| format!("e{index}")).collect();
    assert_eq!(bodies, expected, "every message once, in order");
    let message_ids: std::collections::BTreeSet<&str> =
        edus.iter().filter_map(|edu| edu["content"]["message_id"].as_str()).collect();
    assert_eq!(message_ids.len(), 150);
}

/// The EDUs of `kind` a fake server received.
fn edus_of(fake: &FakeServer, kind: &str) -> Vec<Value> {
    fake.edus()
        .into_iter()
        .filter(|edu| edu["edu_type"] == kind)
        .map(|edu| edu["content"].clone())
        .collect()
}

#[tokio::test]
async fn room_and_user_edus_go_to_the_servers_sharing_the_room() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, FAST).await;
    let fake = FakeServer::start(&ca).await;
    let alice = a.server.register("alice", "pw").await;
    let room = create_room(&a.server, &alice, json!({"preset": "public_chat"})).await;
    let local = create_room(&a.server, &alice, json!({"preset": "public_chat"})).await;
    let friend = fake.user_id("friend");
    inject_member(&a.server, &room, &friend, "join").await;
    let event = send_text(&a.server, &alice, &room, "t1", "hello").await;

    let typing = |room: &str| format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id);
    let (status, _) =
        a.server.put_as(&alice, &typing(&local), json!({"typing": true, "timeout": 20000})).await;
    assert_eq!(status, 200);
    let (status, _) =
        a.server.put_as(&alice, &typing(&room), json!({"typing": true, "timeout": 20000})).await;
    assert_eq!(status, 200);
    let receipt = |kind: &str| format!("/_matrix/client/v3/rooms/{room}/receipt/{kind}/{event}");
    let (status, _) = a.server.post_as(&alice, &receipt("m.read.private"), json!({})).await;
    assert_eq!(status, 200);
    let (status, _) = a.server.post_as(&alice, &receipt("m.read"), json!({})).await;
    assert_eq!(status, 200);
    let (status, _) = a
        .server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/presence/{}/status", alice.user_id),
            json!({"presence": "online", "status_msg": "busy"}),
        )
        .await;
    assert_eq!(status, 200);
    let signer = crate::e2ee::upload_device(&a.server, &alice).await;
    let second = a.server.login("alice", "pw").await;

    let arrived = wait_until(CROSSING, || async {
        edus_of(&fake, "m.device_list_update").len() >= 2
            && !edus_of(&fake, "m.presence").is_empty()
    })
    .await;
    assert!(arrived, "{:?}", fake.edus());
    let typing = edus_of(&fake, "m.typing");
    assert_eq!(
        typing,
        vec![json!({"room_id": room, "user_id": alice.user_id, "typing": true})],
        "not the local room's"
    );
    let receipts = edus_of(&fake, "m.receipt");
    assert_eq!(receipts.len(), 1, "public receipts only: {receipts:?}");
    assert_eq!(receipts[0][&room]["m.read"][&alice.user_id]["event_ids"], json!([event]));
    let presence = edus_of(&fake, "m.presence");
    let last = presence.last().expect("presence");
    assert_eq!(last["push"][0]["user_id"], alice.user_id.as_str());
    assert_eq!(last["push"][0]["presence"], "online");
    assert_eq!(last["push"][0]["status_msg"], "busy");

    // Device list updates: keys for the first device, then the new device, chained.
    let updates = edus_of(&fake, "m.device_list_update");
    assert_eq!(updates[0]["device_id"], alice.device_id.as_str());
    assert_eq!(
        updates[0]["keys"]["keys"][format!("ed25519:{}", alice.device_id)],
        signer.public.as_str()
    );
    assert!(updates[0]["keys"]["unsigned"].is_null(), "names stay home");
    assert_eq!(updates[1]["device_id"], second.device_id.as_str());
    assert_eq!(updates[1]["prev_id"], json!([updates[0]["stream_id"]]));
    assert!(updates[1]["stream_id"].as_u64() > updates[0]["stream_id"].as_u64());

    // A removed device is announced as deleted.
    let (status, body) = a
        .server
        .request(
            reqwest::Method::POST,
            "/_matrix/client/v3/logout",
            Some(&second.token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let deleted = wait_until(CROSSING, || async {
        edus_of(&fake, "m.device_list_update").iter().any(|update| update["deleted"] == true)
    })
    .await;
    assert!(deleted, "{:?}", edus_of(&fake, "m.device_list_update"));

    // Cross-signing keys.
    let master = json!({"user_id": alice.user_id, "usage": ["master"], "keys": {"ed25519:bWFzdGVy": "bWFzdGVy"}});
    let (status, body) = a
        .server
        .post_as(
            &alice,
            "/_matrix/client/v3/keys/device_signing/upload",
            json!({"master_key": master}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let signed =
        wait_until(CROSSING, || async { !edus_of(&fake, "m.signing_key_update").is_empty() }).await;
    assert!(signed);
    assert_eq!(edus_of(&fake, "m.signing_key_update")[0]["master_key"], master);

    // Once the other server's member has left, nothing more goes there.
    inject_member(&a.server, &room, &friend, "leave").await;
    let before = fake.edus().len();
    let (status, _) = a
        .server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id),
            json!({"typing": false}),
        )
        .await;
    assert_eq!(status, 200);
    send_text(&a.server, &alice, &room, "t2", "after").await;
    wait_sent(&a, fake.name.as_str()).await;
    assert_eq!(fake.edus().len(), before, "{:?}", &fake.edus()[before..]);
}

#[tokio::test]
async fn one_event_reaches_every_server_of_its_room_from_one_outbox_row() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &["sender_retry_backoff_min_ms=60000"]).await;
    let alice = a.server.register("alice", "pw").await;
    let room = create_room(&a.server, &alice, json!({"preset": "public_chat"})).await;
    let servers: Vec<String> = (0..300).map(|index| format!("s{index}.invalid")).collect();
    for server in &servers {
        inject_member(&a.server, &room, &format!("@u:{server}"), "join").await;
    }
    inject_member(&a.server, &room, "@u:s0.invalid", "leave").await;
    let services = a.services();
    let room_id = ruma::RoomId::parse(&room).expect("room");
    let known = services.federation.sender.servers_of_room(&room_id).expect("servers");
    assert_eq!(known.len(), 299, "the servers with a member joined");
    assert!(!known.iter().any(|server| server.as_str() == "s0.invalid"));

    let event = send_text(&a.server, &alice, &room, "t1", "to everyone").await;
    let event = ruma::EventId::parse(&event).expect("event");
    let short =
        tuwunel::rooms::event_short(&services.storage, &event).expect("read").expect("short");
    let position = tuwunel::rooms::event_meta(services.storage.engine(), short)
        .expect("read")
        .expect("meta")
        .position;
    let queued = |server: &str| {
        tuwunel::storage::federation::QUEUE_TABLE
            .contains(services.storage.engine(), &(server.to_owned(), position))
            .expect("read")
    };
    let fanned =
        wait_until(CROSSING, || async { servers[1..].iter().all(|server| queued(server)) }).await;
    assert!(fanned, "every server's queue has the event under its position");
    assert!(!queued("s0.invalid"));
    let outbox = tuwunel::storage::federation::OUTBOX_TABLE
        .collect(services.storage.engine(), b"", tuwunel::storage::Direction::Forward, 10)
        .expect("read");
    assert!(outbox.is_empty(), "the outbox row is gone once fanned out");
}

#[tokio::test]
async fn device_lists_and_cross_signing_keys_reach_a_server_sharing_a_room() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, FAST).await;
    let b = FedServer::start(&ca, FAST).await;
    let alice = a.server.register("alice", "pw").await;
    let bob = b.server.register("bob", "pw").await;
    // Each server sees the other's user in one of its rooms: what a federated room will be.
    let on_a = create_room(&a.server, &alice, json!({"preset": "public_chat"})).await;
    inject_member(&a.server, &on_a, &bob.user_id, "join").await;
    let on_b = create_room(&b.server, &bob, json!({"preset": "public_chat"})).await;
    inject_member(&b.server, &on_b, &alice.user_id, "join").await;
    let since =
        sync(&b.server, &bob, None, "").await["next_batch"].as_str().expect("token").to_owned();

    let _ = crate::e2ee::upload_device(&a.server, &alice).await;
    // A device matters to other servers once it has keys: B's first sight of Alice fetches
    // her whole list, which lists the devices with keys (whatever the timing, both end there).
    let phone = a.server.login("alice", "pw").await;
    let _ = crate::e2ee::upload_device(&a.server, &phone).await;
    let stored = |devices: usize| {
        let services = b.services();
        let alice = alice.user_id.clone();
        async move {
            tuwunel::storage::federation::REMOTE_DEVICE_LISTS_TABLE
                .get(services.storage.engine(), &alice)
                .expect("read")
                .is_some_and(|list| {
                    list.0.devices.values().filter(|device| device.keys.is_some()).count()
                        == devices
                })
        }
    };
    assert!(wait_until(CROSSING, || stored(2)).await, "B learnt the keys of Alice's two devices");
    let services = b.services();
    let list = tuwunel::storage::federation::REMOTE_DEVICE_LISTS_TABLE
        .get(services.storage.engine(), &alice.user_id)
        .expect("read")
        .expect("list")
        .0;
    assert!(list.devices[&phone.device_id].keys.is_some(), "{list:?}");
    assert!(list.devices[&alice.device_id].keys.is_some(), "{list:?}");
    let changed = sync(&b.server, &bob, Some(&since), "").await;
    assert!(
        changed["device_lists"]["changed"]
            .as_array()
            .is_some_and(|users| users.contains(&json!(alice.user_id))),
        "{changed}"
    );

    let master = json!({"user_id": alice.user_id, "usage": ["master"], "keys": {"ed25519:bWFzdGVy": "bWFzdGVy"}});
    let (status, body) = a
        .server
        .post_as(
            &alice,
            "/_matrix/client/v3/keys/device_signing/upload",
            json!({"master_key": master}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let crossed = wait_until(CROSSING, || {
        let services = b.services();
        let alice = alice.user_id.clone();
        let master = master.clone();
        async move {
            tuwunel::storage::federation::REMOTE_DEVICE_LISTS_TABLE
                .get(services.storage.engine(), &alice)
                .expect("read")
                .is_some_and(|list| list.0.master_key == Some(master))
        }
    })
    .await;
    assert!(crossed, "B keeps Alice's master key");
}

#[tokio::test]
async fn the_admin_federation_commands() {
    let ca = Ca::new();
    let a = FedServer::start(&ca, &["sender_retry_backoff_min_ms=60000"]).await;
    let b = FedServer::start(&ca, &["well_known.support_email=\"help@example.org\""]).await;
    let fake = FakeServer::start(&ca).await;
    let alice = a.server.register("alice", "pw").await;
    let services = a.services();
    let admin = |line: String| {
        let services = std::sync::Arc::clone(&services);
        async move { tuwunel::admin::execute(&services, &line).await }
    };

    // A server that fails is listed with its backoff and queue, and comes back on a reset.
    fake.fail_with(Some(503));
    let friend = fake.user_id("friend");
    send_to_device(&a, &alice, "t1", &friend, "DEVICE", "queued").await;
    wait_failures(&a, fake.name.as_str(), 1).await;
    let listed = admin("federation destinations".to_owned()).await.expect("destinations");
    assert!(listed.contains(&format!("{}: backing off", fake.name)), "{listed}");
    assert!(listed.contains("1 queued") && listed.contains("503"), "{listed}");
    fake.fail_with(None);
    let reset = admin(format!("federation reset-backoff {}", fake.name)).await.expect("reset");
    assert!(reset.contains("sending what is queued"), "{reset}");
    assert!(wait_until(CROSSING, || async { !fake.received().is_empty() }).await, "sent at once");
    wait_sent(&a, fake.name.as_str()).await;
    let listed = admin("federation destinations".to_owned()).await.expect("destinations");
    assert!(
        listed.contains(&format!("{}: idle; 0 queued, 1 transactions sent, 1 failed", fake.name)),
        "{listed}"
    );

    // A room taken out of federation neither sends nor takes anything.
    let room = create_room(&a.server, &alice, json!({"preset": "public_chat"})).await;
    inject_member(&a.server, &room, &friend, "join").await;
    let shared = admin(format!("federation remote-user-in-rooms {friend}")).await.expect("rooms");
    assert!(shared.contains(&room), "{shared}");
    let disabled = admin(format!("federation disable-room {room}")).await.expect("disable");
    assert!(disabled.contains("disabled"), "{disabled}");
    let before = fake.received().len();
    send_text(&a.server, &alice, &room, "t1", "kept home").await;
    let typing = json!({"edu_type": "m.typing", "content": {"room_id": room, "user_id": friend, "typing": true}});
    let (status, _) =
        fake.send_transaction(&a, "t1", &fake.transaction(vec![], vec![typing.clone()])).await;
    assert_eq!(status, 200);
    wait_sent(&a, fake.name.as_str()).await;
    assert_eq!(fake.received().len(), before, "nothing sent for a disabled room");
    assert!(
        crate::transactions::typing_in(&sync(&a.server, &alice, None, "").await, &room).is_empty()
    );
    let enabled = admin(format!("federation enable-room {room}")).await.expect("enable");
    assert!(enabled.contains("enabled"), "{enabled}");
    let (status, _) =
        fake.send_transaction(&a, "t2", &fake.transaction(vec![], vec![typing])).await;
    assert_eq!(status, 200);
    assert_eq!(
        crate::transactions::typing_in(&sync(&a.server, &alice, None, "").await, &room),
        vec![friend.clone()]
    );
    send_text(&a.server, &alice, &room, "t2", "goes out").await;
    assert!(wait_until(CROSSING, || async { fake.received().len() > before }).await);

    let idle = admin("federation incoming-federation".to_owned()).await.expect("incoming");
    assert!(idle.contains("No transactions"), "{idle}");
    let support =
        admin(format!("federation fetch-support-well-known {}", b.name)).await.expect("support");
    assert!(support.contains("help@example.org"), "{support}");
    let unknown =
        admin("federation fetch-support-well-known unknown-host.invalid".to_owned()).await;
    assert!(unknown.is_err());
}
