//! The live streams in detail: typing expiry, presence timers and passivation, to-device to
//! every device, threaded receipts, `set_presence`, `full_state` and the remaining filter
//! fields.

use std::time::{Duration, Instant};

use ruma::OwnedUserId;
use serde_json::{Value, json};

use crate::{
    common::{TestServer, assert_error, wait_until},
    rooms::{create_room, send_text},
    sync::sync,
};

fn ephemeral_of<'a>(body: &'a Value, room: &str, kind: &str) -> Option<&'a Value> {
    body["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .find(|event| event["type"] == kind)
}

#[tokio::test]
async fn typing_notices_expire_and_wake_waiting_syncs() {
    let (mut server, clock) =
        TestServer::with_clock(&["typing_client_timeout_min_s=1", "client_sync_timeout_min=0"])
            .await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post_as(&bob, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    let typing = format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id);
    let (status, body) =
        server.put_as(&alice, &typing, json!({"typing": true, "timeout": 1000})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.put_as(&alice, &typing, json!({"typing": "yes"})).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let first = sync(&server, &bob, None, "").await;
    let notice = ephemeral_of(&first, &room, "m.typing").expect("typing");
    assert_eq!(notice["content"]["user_ids"], json!([alice.user_id]));

    // While the clock stands still the notice stays; the expiry itself then wakes the long
    // poll, once the clock reaches it.
    let token = first["next_batch"].as_str().expect("next");
    let path = format!("/_matrix/client/v3/sync?timeout=10000&since={token}");
    let (status, body, elapsed) = {
        let mut poll = std::pin::pin!(server.get_as(&bob, &path));
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut poll).await.is_err(),
            "the long poll answered while the clock stood still"
        );
        let started = Instant::now();
        clock.advance(Duration::from_secs(1));
        let (status, body) =
            tokio::time::timeout(Duration::from_secs(10), poll).await.expect("the poll answers");
        (status, body, started.elapsed())
    };
    assert_eq!(status, 200);
    let notice = ephemeral_of(&body, &room, "m.typing").expect("typing stopped");
    assert_eq!(notice["content"]["user_ids"], json!([]), "{body}");
    assert!(elapsed < Duration::from_secs(5), "woken by the expiry, not the timeout: {elapsed:?}");
    server.stop().await;
}

#[tokio::test]
async fn presence_goes_idle_then_offline_and_the_actor_passivates() {
    let (mut server, clock) = TestServer::with_clock(&[
        "presence_idle_timeout_s=1",
        "presence_offline_timeout_s=2",
        "actor_idle_timeout_s=1",
    ])
    .await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post_as(&bob, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    let status_path = format!("/_matrix/client/v3/presence/{}/status", alice.user_id);

    // A sync marks Alice online; set_presence=unavailable and =offline are honoured.
    sync(&server, &alice, None, "").await;
    let (_, presence) = server.get_as(&bob, &status_path).await;
    assert_eq!(presence["presence"], "online", "{presence}");
    assert_eq!(presence["currently_active"], true);
    assert!(presence["last_active_ago"].as_u64().is_some_and(|ago| ago < 5_000), "{presence}");
    sync(&server, &alice, None, "&set_presence=unavailable").await;
    let (_, presence) = server.get_as(&bob, &status_path).await;
    assert_eq!(presence["presence"], "unavailable", "{presence}");

    let (status, body) = server
        .put_as(&alice, &status_path, json!({"presence": "online", "status_msg": "around"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.put_as(&alice, &status_path, json!({"presence": "sleepy"})).await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = server.put_as(&bob, &status_path, json!({"presence": "online"})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");

    // Idle after a second, offline after two (on the server's clock), and then no actor is
    // left running (passivation runs in real time).
    let alice_id: OwnedUserId = alice.user_id.parse().expect("user id");
    let services = std::sync::Arc::clone(server.server().services());
    assert!(services.presence.actors.is_live(&alice_id));
    let presence_of = || async { server.get_as(&bob, &status_path).await.1["presence"].clone() };
    clock.advance(Duration::from_millis(900));
    assert_eq!(presence_of().await, "online", "idle too early");
    clock.advance(Duration::from_millis(100));
    assert!(
        wait_until(Duration::from_secs(10), || async { presence_of().await == "unavailable" })
            .await,
        "idle once the idle timeout has passed"
    );
    // The next check is scheduled after the state is saved, so the clock moves on in steps
    // until the check that it set has run.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            clock.advance(Duration::from_millis(100));
            presence_of().await == "offline"
        })
        .await,
        "offline after the offline timeout"
    );
    let (_, body) = server.get_as(&bob, &status_path).await;
    assert_eq!(body["status_msg"], "around", "the status message survives going offline");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            !services.presence.actors.is_live(&alice_id)
        })
        .await,
        "an offline user's presence actor passivates"
    );
    server.stop().await;
}

#[tokio::test]
async fn steady_syncing_keeps_presence_online_past_the_idle_timeout() {
    let (mut server, clock) =
        TestServer::with_clock(&["presence_idle_timeout_s=1", "presence_offline_timeout_s=30"])
            .await;
    let alice = server.register("alice", "pw").await;
    let status_path = format!("/_matrix/client/v3/presence/{}/status", alice.user_id);
    // Once online, syncs only record activity; the idleness check must still see it.
    for _ in 0..12 {
        sync(&server, &alice, None, "").await;
        clock.advance(Duration::from_millis(250));
        let (_, presence) = server.get_as(&alice, &status_path).await;
        assert_eq!(presence["presence"], "online", "{presence}");
    }
    assert!(
        wait_until(Duration::from_secs(10), || async {
            clock.advance(Duration::from_millis(250));
            server.get_as(&alice, &status_path).await.1["presence"] == "unavailable"
        })
        .await,
        "idle once the syncs stop"
    );
    // Activity brings the user back at once.
    sync(&server, &alice, None, "").await;
    let (_, presence) = server.get_as(&alice, &status_path).await;
    assert_eq!(presence["presence"], "online", "{presence}");
    server.stop().await;
}

#[tokio::test]
async fn presence_can_be_switched_off() {
    let mut server =
        TestServer::with_options(&["allow_local_presence=false", "allow_outgoing_presence=false"])
            .await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post_as(&bob, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    let status_path = format!("/_matrix/client/v3/presence/{}/status", alice.user_id);
    let (status, _) = server.put_as(&alice, &status_path, json!({"presence": "online"})).await;
    assert_eq!(status, 200);
    let body = sync(&server, &bob, None, "").await;
    assert!(body["presence"]["events"].as_array().is_none_or(Vec::is_empty), "{body}");
    let (_, presence) = server.get_as(&bob, &status_path).await;
    assert_eq!(presence["presence"], "offline", "{presence}");
    server.stop().await;
}

#[tokio::test]
async fn to_device_star_reaches_every_device() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob_phone = server.register("bob", "pw").await;
    let bob_laptop = server.login("bob", "pw").await;
    let (status, body) = server
        .put_as(
            &alice,
            "/_matrix/client/v3/sendToDevice/m.test/all1",
            json!({"messages": {bob_phone.user_id.clone(): {"*": {"hi": "all"}}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for device in [&bob_phone, &bob_laptop] {
        let body = sync(&server, device, None, "").await;
        let events = body["to_device"]["events"].as_array().expect("to_device");
        assert_eq!(events.len(), 1, "{} got {events:?}", device.device_id);
        assert_eq!(events[0]["content"]["hi"], "all");
        assert_eq!(events[0]["type"], "m.test");
    }
    // Unknown devices and users are ignored; malformed bodies refused.
    let (status, _) = server
        .put_as(
            &alice,
            "/_matrix/client/v3/sendToDevice/m.test/all2",
            json!({"messages": {"@nobody:test.local": {"X": {}}}}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = server
        .put_as(&alice, "/_matrix/client/v3/sendToDevice/m.test/all3", json!({"messages": 5}))
        .await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    server.stop().await;
}

#[tokio::test]
async fn to_device_messages_to_a_quiet_device_are_delivered_then_acknowledged() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    // Bob's syncs first learn that his queue is empty.
    let first = sync(&server, &bob, None, "").await;
    let start = first["next_batch"].as_str().expect("next").to_owned();
    let quiet = sync(&server, &bob, Some(&start), "").await;
    assert!(quiet["to_device"]["events"].as_array().is_none_or(Vec::is_empty), "{quiet}");
    for round in 0..2 {
        let (status, body) = server
            .put_as(
                &alice,
                &format!("/_matrix/client/v3/sendToDevice/m.test/quiet{round}"),
                json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"round": round}}}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let delivered = sync(&server, &bob, Some(&start), "").await;
        let events = delivered["to_device"]["events"].as_array().expect("delivered");
        assert_eq!(events.len(), 1, "{delivered}");
        assert_eq!(events[0]["content"]["round"], round);
        // The next token acknowledges it: even the older token no longer sees it.
        let next = delivered["next_batch"].as_str().expect("next");
        sync(&server, &bob, Some(next), "").await;
        let again = sync(&server, &bob, Some(&start), "").await;
        assert!(
            again["to_device"]["events"].as_array().is_none_or(Vec::is_empty),
            "acknowledged messages are gone: {again}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn to_device_pages_never_acknowledge_unseen_messages() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let messages: serde_json::Map<String, Value> =
        std::iter::once((bob.device_id.clone(), json!({"n": 0}))).collect();
    for index in 0..150 {
        let (status, _) = server
            .put_as(
                &alice,
                &format!("/_matrix/client/v3/sendToDevice/m.test/page{index}"),
                json!({"messages": {bob.user_id.clone(): messages.clone()}}),
            )
            .await;
        assert_eq!(status, 200);
    }
    let mut received = 0;
    let mut since: Option<String> = None;
    for _ in 0..5 {
        let body = sync(&server, &bob, since.as_deref(), "").await;
        received += body["to_device"]["events"].as_array().map_or(0, Vec::len);
        since = body["next_batch"].as_str().map(str::to_owned);
    }
    assert_eq!(received, 150, "every message exactly once across pages");
    server.stop().await;
}

#[tokio::test]
async fn threaded_receipts_carry_their_thread() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post_as(&bob, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    let root = send_text(&server, &alice, &room, "root", "thread root").await;
    let (status, reply) = server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/reply"),
            json!({
                "msgtype": "m.text", "body": "in thread",
                "m.relates_to": {"rel_type": "m.thread", "event_id": root},
            }),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let reply = reply["event_id"].as_str().expect("id").to_owned();
    let receipt = format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{reply}");
    let (status, body) = server.post_as(&bob, &receipt, json!({"thread_id": root})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .post_as(
            &bob,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{root}"),
            json!({"thread_id": "main"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .post_as(
            &bob,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.fully_read/{root}"),
            json!({"thread_id": "main"}),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");

    let view = sync(&server, &alice, None, "").await;
    let receipts = ephemeral_of(&view, &room, "m.receipt").expect("receipts");
    assert_eq!(
        receipts["content"][&reply]["m.read"][&bob.user_id]["thread_id"],
        root.as_str(),
        "{receipts}"
    );
    assert_eq!(
        receipts["content"][&root]["m.read"][&bob.user_id]["thread_id"], "main",
        "{receipts}"
    );
    server.stop().await;
}

#[tokio::test]
async fn full_state_and_the_remaining_filter_fields() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let kept = create_room(&server, &alice, json!({"preset": "public_chat", "name": "Kept"})).await;
    let hidden = create_room(&server, &alice, json!({"name": "Hidden"})).await;
    let left = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post_as(&bob, &format!("/_matrix/client/v3/join/{kept}"), json!({})).await;
    server.post_as(&alice, &format!("/_matrix/client/v3/rooms/{left}/leave"), json!({})).await;
    let first = sync(&server, &alice, None, "").await;
    let token = first["next_batch"].as_str().expect("next").to_owned();
    assert!(
        first["rooms"]["leave"].get(&left).is_none(),
        "left rooms are not in an initial sync by default"
    );

    // full_state with a token sends the whole state again.
    let full = sync(&server, &alice, Some(&token), "&full_state=true").await;
    let state = full["rooms"]["join"][&kept]["state"]["events"].as_array().expect("full state");
    assert!(state.iter().any(|event| event["type"] == "m.room.create"), "{state:?}");
    assert!(state.iter().any(|event| event["type"] == "m.room.name"));
    let incremental = sync(&server, &alice, Some(&token), "").await;
    assert!(incremental["rooms"]["join"].get(&kept).is_none(), "nothing new: {incremental}");

    // not_rooms, include_leave, and flags every client sends.
    let filter = json!({"room": {
        "not_rooms": [hidden],
        "include_leave": true,
        "timeline": {"limit": 3, "unread_thread_notifications": true},
        "state": {"lazy_load_members": true, "include_redundant_members": true},
    }});
    let encoded = filter
        .to_string()
        .replace('%', "%25")
        .replace('#', "%23")
        .replace('&', "%26")
        .replace('+', "%2B");
    let filtered = sync(&server, &alice, None, &format!("&filter={encoded}")).await;
    assert!(filtered["rooms"]["join"].get(&hidden).is_none(), "{filtered}");
    assert!(filtered["rooms"]["join"].get(&kept).is_some());
    assert!(filtered["rooms"]["leave"].get(&left).is_some(), "include_leave: {filtered}");
    let timeline =
        filtered["rooms"]["join"][&kept]["timeline"]["events"].as_array().expect("timeline");
    assert!(timeline.len() <= 3);
    assert_eq!(filtered["rooms"]["join"][&kept]["timeline"]["limited"], true);
    let (status, body) =
        server.get_as(&alice, "/_matrix/client/v3/sync?filter=%7B%22room%22%3A5%7D").await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = server.get_as(&alice, "/_matrix/client/v3/sync?timeout=soon").await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_of_a_to_device_transaction_deliver_once() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let url = server.url("/_matrix/client/v3/sendToDevice/m.test/retried");
    let body = json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"once": true}}}});
    let mut retries = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let request =
            server.client.put(url.clone()).bearer_auth(alice.token.clone()).json(&body).send();
        retries.spawn(async move { request.await.expect("request").status().as_u16() });
    }
    while let Some(status) = retries.join_next().await {
        assert_eq!(status.expect("task"), 200, "every retry is acknowledged");
    }
    let delivered = sync(&server, &bob, None, "").await;
    let events = delivered["to_device"]["events"].as_array().expect("to_device");
    assert_eq!(events.len(), 1, "delivered once: {events:?}");

    // A device that does not exist gets nothing queued.
    let (status, body) = server
        .put_as(
            &alice,
            "/_matrix/client/v3/sendToDevice/m.test/ghost",
            json!({"messages": {bob.user_id.clone(): {"NOSUCHDEVICE": {"lost": true}}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    use tuwunel::storage::{Direction, codec::Prefix, ephemeral::TO_DEVICE_TABLE};
    let queued = TO_DEVICE_TABLE
        .collect(
            server.server().services().storage.engine(),
            &Prefix::of2(&bob.id(), &ruma::OwnedDeviceId::from("NOSUCHDEVICE")),
            Direction::Forward,
            usize::MAX,
        )
        .expect("scan");
    assert!(queued.is_empty(), "{} messages queued for a device that does not exist", queued.len());
    server.stop().await;
}

#[tokio::test]
async fn a_room_actor_that_fails_drops_its_typing_notices_and_can_passivate() {
    let mut server =
        TestServer::with_options(&["actor_idle_timeout_s=1", "client_sync_timeout_min=0"]).await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post_as(&bob, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    let typing = format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id);
    let (status, body) =
        server.put_as(&alice, &typing, json!({"typing": true, "timeout": 30000})).await;
    assert_eq!(status, 200, "{body}");
    let first = sync(&server, &bob, None, "").await;
    let notice = ephemeral_of(&first, &room, "m.typing").expect("typing");
    assert_eq!(notice["content"]["user_ids"], json!([alice.user_id]));

    let services = std::sync::Arc::clone(server.server().services());
    let room_id: ruma::OwnedRoomId = room.parse().expect("room id");
    assert!(services.rooms.actors.inject_failure(&room_id), "the room actor is live");
    // The failure stops the notice (its expiry timer died with the actor) and says so.
    let token = first["next_batch"].as_str().expect("next");
    let (status, body) =
        server.get_as(&bob, &format!("/_matrix/client/v3/sync?timeout=10000&since={token}")).await;
    assert_eq!(status, 200);
    let notice = ephemeral_of(&body, &room, "m.typing").expect("typing stopped");
    assert_eq!(notice["content"]["user_ids"], json!([]), "{body}");

    // The room works again (once its restart backoff has passed), and its actor
    // passivates once idle.
    let send = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/again");
    let mut sent = 0;
    for _ in 0..50 {
        let (status, _) =
            server.put_as(&alice, &send, json!({"msgtype": "m.text", "body": "hi"})).await;
        sent = status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sent, 200, "the room came back");
    assert!(
        wait_until(Duration::from_secs(10), || async { !services.rooms.actors.is_live(&room_id) })
            .await,
        "the room actor never passivated"
    );
    drop(services);
    server.stop().await;
}

#[tokio::test]
async fn a_presence_actor_that_fails_still_lets_its_user_go_idle() {
    let mut server =
        TestServer::with_options(&["presence_idle_timeout_s=1", "presence_offline_timeout_s=600"])
            .await;
    let alice = server.register("alice", "pw").await;
    let status_path = format!("/_matrix/client/v3/presence/{}/status", alice.user_id);
    let (status, body) = server.put_as(&alice, &status_path, json!({"presence": "online"})).await;
    assert_eq!(status, 200, "{body}");
    let services = std::sync::Arc::clone(server.server().services());
    let alice_id: OwnedUserId = alice.user_id.parse().expect("user id");
    assert!(services.presence.actors.inject_failure(&alice_id), "the presence actor is live");
    // Activity, which only touches memory while the user counts as settled (it may also
    // meet the failed actor's restart backoff).
    let _ = services.presence.active(&alice_id).await;
    let mut state = String::new();
    for _ in 0..100 {
        let (_, body) = server.get_as(&alice, &status_path).await;
        state = body["presence"].as_str().unwrap_or_default().to_owned();
        if state == "unavailable" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "unavailable", "the user never went idle after the actor failed");
    drop(services);
    server.stop().await;
}
