//! /sync: sections, tokens, long polling on the SyncHub, gappy timelines, lazy loading,
//! filters, and the live streams (typing, receipts, to-device, presence, account data).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{
    common::{TestServer, User, assert_error},
    rooms::{create_room, send_text},
};

/// Options for fast long polls in tests.
const QUICK: &[&str] = &["client_sync_timeout_min=0", "client_sync_timeout_max=20000"];

pub(crate) async fn sync(
    server: &TestServer,
    user: &User,
    since: Option<&str>,
    extra: &str,
) -> Value {
    let mut path = "/_matrix/client/v3/sync?timeout=0".to_owned();
    if let Some(since) = since {
        path.push_str(&format!("&since={since}"));
    }
    path.push_str(extra);
    let (status, body) = server.get_as(user, &path).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// A long poll running in the background; its task yields the response body.
fn spawn_sync(server: &TestServer, user: &User, query: &str) -> tokio::task::JoinHandle<Value> {
    let url = server.url(&format!("/_matrix/client/v3/sync?{query}"));
    let client = server.client.clone();
    let token = user.token.clone();
    tokio::spawn(async move {
        client.get(url).bearer_auth(token).send().await.expect("sync").json().await.expect("json")
    })
}

fn timeline_ids(body: &Value, room: &str) -> Vec<String> {
    body["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|event| event["event_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn initial_and_incremental_sync_cover_rooms_invites_and_leaves() {
    let mut server = TestServer::with_options(QUICK).await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&server, &alice, json!({"name": "Sync room"})).await;
    let first = send_text(&server, &alice, &room, "1", "hello").await;

    let initial = sync(&server, &alice, None, "").await;
    let joined = &initial["rooms"]["join"][room.as_str()];
    assert!(timeline_ids(&initial, &room).contains(&first), "{initial}");
    let state_or_timeline: Vec<&str> = joined["state"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(joined["timeline"]["events"].as_array().into_iter().flatten())
        .filter_map(|event| event["type"].as_str())
        .collect();
    for kind in ["m.room.create", "m.room.member", "m.room.power_levels", "m.room.name"] {
        assert!(state_or_timeline.contains(&kind), "{kind} missing: {joined}");
    }
    assert_eq!(joined["summary"]["m.joined_member_count"], 1);
    let next = initial["next_batch"].as_str().expect("next_batch").to_owned();
    assert!(next.starts_with('s'));
    assert!(joined["timeline"]["events"][0].get("room_id").is_none(), "sync events omit room_id");

    // Nothing new: the room is absent.
    let quiet = sync(&server, &alice, Some(&next), "").await;
    assert!(quiet["rooms"]["join"].get(&room).is_none(), "{quiet}");

    // An invite reaches bob with stripped state.
    server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            json!({"user_id": bob.user_id}),
        )
        .await;
    let bob_sync = sync(&server, &bob, None, "").await;
    let invite = &bob_sync["rooms"]["invite"][room.as_str()]["invite_state"]["events"];
    let kinds: Vec<&str> = invite
        .as_array()
        .expect("invite_state")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(kinds.contains(&"m.room.name") && kinds.contains(&"m.room.member"), "{bob_sync}");
    let bob_next = bob_sync["next_batch"].as_str().expect("next").to_owned();

    // Joining moves it to join with the full state.
    server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/join"), json!({})).await;
    let after_join = sync(&server, &bob, Some(&bob_next), "").await;
    let joined = &after_join["rooms"]["join"][room.as_str()];
    assert!(joined.is_object(), "{after_join}");
    assert!(after_join["rooms"]["invite"].get(&room).is_none());
    let bob_next = after_join["next_batch"].as_str().expect("next").to_owned();

    // Leaving appears under leave, once.
    server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/leave"), json!({})).await;
    let after_leave = sync(&server, &bob, Some(&bob_next), "").await;
    let left = &after_leave["rooms"]["leave"][room.as_str()];
    assert!(
        left["timeline"]["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["content"]["membership"] == "leave"),
        "{after_leave}"
    );
    let again = sync(&server, &bob, after_leave["next_batch"].as_str(), "").await;
    assert!(again["rooms"]["leave"].get(&room).is_none());
    // Initial syncs hide left rooms unless include_leave.
    let initial = sync(&server, &bob, None, "").await;
    assert!(initial["rooms"]["leave"].get(&room).is_none());
    let filter = encode(r#"{"room":{"include_leave":true}}"#);
    let with_leave = sync(&server, &bob, None, &format!("&filter={filter}")).await;
    assert!(with_leave["rooms"]["leave"].get(&room).is_some(), "{with_leave}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_syncs_never_miss_or_repeat_an_event() {
    let mut server = TestServer::with_options(QUICK).await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({})).await;
    let mut token =
        sync(&server, &alice, None, "").await["next_batch"].as_str().expect("next").to_owned();
    let writer = {
        let base = server.url("");
        let client = server.client.clone();
        let alice = alice.clone();
        let room = room.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for index in 0..120 {
                let url =
                    format!("{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/s{index}");
                let body: Value = client
                    .put(url)
                    .bearer_auth(&alice.token)
                    .json(&json!({"msgtype": "m.text", "body": index.to_string()}))
                    .send()
                    .await
                    .expect("send")
                    .json()
                    .await
                    .expect("json");
                sent.push(body["event_id"].as_str().expect("id").to_owned());
            }
            sent
        })
    };
    let filter = encode(r#"{"room":{"timeline":{"limit":100}}}"#);
    let mut received = Vec::new();
    let started = Instant::now();
    while !writer.is_finished() || received.len() < 120 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "sync never caught up ({} of 120)",
            received.len()
        );
        let body = sync(&server, &alice, Some(&token), &format!("&filter={filter}")).await;
        let joined = &body["rooms"]["join"][room.as_str()];
        assert_ne!(
            joined["timeline"]["limited"], true,
            "a 100-event page should never be limited here"
        );
        for event in joined["timeline"]["events"].as_array().into_iter().flatten() {
            if event["type"] == "m.room.message" {
                received.push(event["event_id"].as_str().expect("id").to_owned());
            }
        }
        token = body["next_batch"].as_str().expect("next").to_owned();
        if writer.is_finished() && received.len() >= 120 {
            break;
        }
    }
    let sent = writer.await.expect("writer");
    assert_eq!(received, sent, "every event exactly once, in order");
    server.stop().await;
}

/// Sync keeps parsed events, memberships and unread counts in caches; each must follow the
/// writes: a message already synced shows redacted after its redaction, a leave and a
/// rejoin show at once, and unread counts follow every message and receipt.
#[tokio::test]
async fn cached_events_memberships_and_counts_follow_every_write() {
    let mut server = TestServer::with_options(QUICK).await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post_as(&bob, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    let mut token =
        sync(&server, &bob, None, "").await["next_batch"].as_str().expect("next").to_owned();
    let joined = |body: &Value| body["rooms"]["join"][room.as_str()].clone();

    let secret = send_text(&server, &alice, &room, "c1", "secret").await;
    // The count commits with the message: a sync right after the send has both.
    let body = sync(&server, &bob, Some(&token), "").await;
    let shown = joined(&body)["timeline"]["events"]
        .as_array()
        .and_then(|events| events.iter().find(|event| event["event_id"] == secret.as_str()))
        .cloned()
        .expect("the message");
    assert_eq!(shown["content"]["body"], "secret");
    assert_eq!(joined(&body)["unread_notifications"]["notification_count"], 1, "{body}");
    token = body["next_batch"].as_str().expect("next").to_owned();

    let (status, body) = server
        .put_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/redact/{secret}/c2"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let full = sync(&server, &bob, None, "").await;
    let redacted = joined(&full)["timeline"]["events"]
        .as_array()
        .and_then(|events| events.iter().find(|event| event["event_id"] == secret.as_str()))
        .cloned()
        .expect("the message, redacted");
    assert_eq!(redacted["content"], json!({}), "{redacted}");

    // Counts follow a second message, then bob's receipt.
    let second = send_text(&server, &alice, &room, "c3", "again").await;
    let body = sync(&server, &bob, Some(&token), "").await;
    assert_eq!(joined(&body)["unread_notifications"]["notification_count"], 2, "{body}");
    token = body["next_batch"].as_str().expect("next").to_owned();
    let (status, _) = server
        .post_as(
            &bob,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{second}"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let body = sync(&server, &bob, Some(&token), "").await;
    assert_eq!(joined(&body)["unread_notifications"]["notification_count"], 0, "{body}");
    token = body["next_batch"].as_str().expect("next").to_owned();

    // Leaving and rejoining show in the next sync each time.
    server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/leave"), json!({})).await;
    let body = sync(&server, &bob, Some(&token), "").await;
    assert!(body["rooms"]["leave"].get(room.as_str()).is_some(), "{body}");
    assert!(body["rooms"]["join"].get(room.as_str()).is_none(), "{body}");
    token = body["next_batch"].as_str().expect("next").to_owned();
    server.post_as(&bob, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    let body = sync(&server, &bob, Some(&token), "").await;
    assert!(joined(&body).is_object(), "{body}");
    server.stop().await;
}

/// A poll with a token that is already current waits without computing a response first, and
/// still hears of a message sent while it waits.
#[tokio::test]
async fn a_current_token_waits_without_computing_and_still_wakes() {
    let mut options = QUICK.to_vec();
    options.push("metrics_enabled=true");
    let mut server = TestServer::with_options(&options).await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({})).await;
    let token =
        sync(&server, &alice, None, "").await["next_batch"].as_str().expect("next").to_owned();
    let skipped = |text: &str| -> u64 {
        text.lines()
            .find(|line| line.starts_with("tuwunel_sync_skipped_computations_total"))
            .and_then(|line| line.split_whitespace().last())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    let metrics = || async {
        server
            .client
            .get(server.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    };
    let before = skipped(&metrics().await);

    let waiter = spawn_sync(&server, &alice, &format!("timeout=10000&since={token}"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(skipped(&metrics().await) > before, "the poll computed a response it did not need");
    let event = send_text(&server, &alice, &room, "t1", "while you wait").await;
    let body = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken well before the timeout")
        .expect("task");
    assert_eq!(timeline_ids(&body, &room), vec![event], "{body}");
    server.stop().await;
}

/// Small incremental syncs are computed on the request's task, those of a user in many rooms
/// on the blocking pool (`sync::tests` in the library checks the rule). Both answer alike.
#[tokio::test]
async fn incremental_syncs_answer_alike_for_few_and_many_rooms() {
    let mut server = TestServer::with_options(QUICK).await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({})).await;
    let token =
        sync(&server, &alice, None, "").await["next_batch"].as_str().expect("next").to_owned();
    let event = send_text(&server, &alice, &room, "t1", "few rooms").await;
    let body = sync(&server, &alice, Some(&token), "").await;
    assert_eq!(timeline_ids(&body, &room), vec![event], "{body}");

    // More rooms than the inline limit (64).
    let mut last_room = room;
    for _ in 0..64 {
        last_room = create_room(&server, &alice, json!({})).await;
    }
    let token = body["next_batch"].as_str().expect("next").to_owned();
    let token = sync(&server, &alice, Some(&token), "").await["next_batch"]
        .as_str()
        .expect("next")
        .to_owned();
    let event = send_text(&server, &alice, &last_room, "t2", "many rooms").await;
    let body = sync(&server, &alice, Some(&token), "").await;
    assert_eq!(timeline_ids(&body, &last_room), vec![event], "{body}");
    assert_eq!(body["rooms"]["join"].as_object().map(|rooms| rooms.len()), Some(1), "{body}");
    server.stop().await;
}

/// An incremental sync finds a room's newest events in memory when it is a few behind, and
/// scans for them when it is further behind than memory keeps (16 per room): both ways give
/// the same events in order.
#[tokio::test]
async fn syncs_near_and_far_behind_see_the_same_events() {
    let mut server = TestServer::with_options(QUICK).await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({})).await;
    let filter = format!("&filter={}", encode(r#"{"room":{"timeline":{"limit":50}}}"#));
    let far =
        sync(&server, &alice, None, "").await["next_batch"].as_str().expect("next").to_owned();
    let mut sent = Vec::new();
    for index in 0..10 {
        sent.push(send_text(&server, &alice, &room, &format!("a{index}"), "first half").await);
    }
    let body = sync(&server, &alice, Some(&far), &filter).await;
    assert_eq!(timeline_ids(&body, &room), sent, "{body}");
    let near = body["next_batch"].as_str().expect("next").to_owned();
    for index in 0..10 {
        sent.push(send_text(&server, &alice, &room, &format!("b{index}"), "second half").await);
    }
    let body = sync(&server, &alice, Some(&near), &filter).await;
    assert_eq!(timeline_ids(&body, &room), sent[10..], "{body}");
    let body = sync(&server, &alice, Some(&far), &filter).await;
    assert_eq!(timeline_ids(&body, &room), sent, "{body}");
    assert_ne!(body["rooms"]["join"][room.as_str()]["timeline"]["limited"], true, "{body}");
    // Limited either way: the newest five, and a gap.
    let five = format!("&filter={}", encode(r#"{"room":{"timeline":{"limit":5}}}"#));
    for token in [&near, &far] {
        let body = sync(&server, &alice, Some(token), &five).await;
        assert_eq!(timeline_ids(&body, &room), sent[15..], "{body}");
        assert_eq!(body["rooms"]["join"][room.as_str()]["timeline"]["limited"], true, "{body}");
    }
    server.stop().await;
}

#[tokio::test]
async fn long_polls_wake_on_each_stream_and_time_out_empty() {
    let mut server = TestServer::with_options(QUICK).await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post_as(&bob, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    let mut token =
        sync(&server, &bob, None, "").await["next_batch"].as_str().expect("next").to_owned();

    // Times out empty.
    let started = Instant::now();
    let (status, body) =
        server.get_as(&bob, &format!("/_matrix/client/v3/sync?timeout=400&since={token}")).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(350), "returned before the timeout: {body}");
    assert!(body["rooms"]["join"].get(&room).is_none(), "{body}");
    token = body["next_batch"].as_str().expect("next").to_owned();

    // Each kind of change wakes a waiting request long before its 15 s timeout.
    let mut last_message = String::new();
    for kind in ["message", "typing", "receipt", "to_device", "account_data", "presence", "invite"]
    {
        let started = Instant::now();
        let waiter = spawn_sync(&server, &bob, &format!("timeout=15000&since={token}"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        match kind {
            "message" => {
                last_message = send_text(&server, &alice, &room, "wake", "wake up").await;
            }
            "typing" => {
                let (status, body) = server
                    .put_as(
                        &alice,
                        &format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id),
                        json!({"typing": true, "timeout": 20000}),
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
            }
            "receipt" => {
                let (status, body) = server
                    .post_as(
                        &alice,
                        &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{last_message}"),
                        json!({}),
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
            }
            "to_device" => {
                let (status, body) = server.put_as(&alice, "/_matrix/client/v3/sendToDevice/m.test/t1", json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"hello": "bob"}}}})).await;
                assert_eq!(status, 200, "{body}");
            }
            "account_data" => {
                let (status, _) = server
                    .put_as(
                        &bob,
                        "/_matrix/client/v3/user/@bob:test.local/account_data/org.example.wake",
                        json!({"x": 1}),
                    )
                    .await;
                assert_eq!(status, 200);
            }
            "presence" => {
                let (status, _) = server
                    .put_as(
                        &alice,
                        "/_matrix/client/v3/presence/@alice:test.local/status",
                        json!({"presence": "unavailable", "status_msg": "lunch"}),
                    )
                    .await;
                assert_eq!(status, 200);
            }
            "invite" => {
                let other = create_room(&server, &alice, json!({})).await;
                server
                    .post_as(
                        &alice,
                        &format!("/_matrix/client/v3/rooms/{other}/invite"),
                        json!({"user_id": bob.user_id}),
                    )
                    .await;
            }
            _ => unreachable!(),
        }
        let body = tokio::time::timeout(Duration::from_secs(20), waiter)
            .await
            .expect("answered")
            .expect("task");
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(10),
            "{kind}: the long poll was not woken ({elapsed:?})"
        );
        let woke_for_it = match kind {
            "message" => body["rooms"]["join"][room.as_str()]["timeline"]["events"]
                .as_array()
                .is_some_and(|e| !e.is_empty()),
            "receipt" => body["rooms"]["join"][room.as_str()]["ephemeral"]["events"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| {
                    e["type"] == "m.receipt"
                        && e["content"][last_message.as_str()]["m.read"][alice.user_id.as_str()]
                            .is_object()
                }),
            "typing" => body["rooms"]["join"][room.as_str()]["ephemeral"]["events"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| {
                    e["type"] == "m.typing" && e["content"]["user_ids"][0] == alice.user_id.as_str()
                }),
            "to_device" => body["to_device"]["events"][0]["content"]["hello"] == "bob",
            "account_data" => body["account_data"]["events"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["type"] == "org.example.wake"),
            "presence" => body["presence"]["events"].as_array().into_iter().flatten().any(|e| {
                e["sender"] == alice.user_id.as_str() && e["content"]["status_msg"] == "lunch"
            }),
            "invite" => {
                body["rooms"]["invite"].as_object().is_some_and(|invites| !invites.is_empty())
            }
            _ => false,
        };
        assert!(woke_for_it, "{kind}: {body}");
        token = body["next_batch"].as_str().expect("next").to_owned();
    }
    server.stop().await;
}

#[tokio::test]
async fn gappy_timelines_are_limited_with_a_state_delta_and_a_usable_prev_batch() {
    let mut server = TestServer::with_options(QUICK).await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({"name": "Before"})).await;
    let token =
        sync(&server, &alice, None, "").await["next_batch"].as_str().expect("next").to_owned();
    let mut sent = Vec::new();
    for index in 0..8 {
        sent.push(
            send_text(&server, &alice, &room, &format!("g{index}"), &format!("m{index}")).await,
        );
    }
    server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"),
            json!({"name": "During"}),
        )
        .await;
    for index in 8..20 {
        sent.push(
            send_text(&server, &alice, &room, &format!("g{index}"), &format!("m{index}")).await,
        );
    }
    let filter = encode(r#"{"room":{"timeline":{"limit":5}}}"#);
    let body = sync(&server, &alice, Some(&token), &format!("&filter={filter}")).await;
    let joined = &body["rooms"]["join"][room.as_str()];
    assert_eq!(joined["timeline"]["limited"], true, "{joined}");
    assert_eq!(timeline_ids(&body, &room), sent[15..].to_vec());
    let names: Vec<&Value> = joined["state"]["events"]
        .as_array()
        .expect("state")
        .iter()
        .filter(|e| e["type"] == "m.room.name")
        .collect();
    assert_eq!(names.len(), 1, "the gap's state change is in the state section: {joined}");
    assert_eq!(names[0]["content"]["name"], "During");
    // prev_batch continues backwards exactly where the timeline starts.
    let prev = joined["timeline"]["prev_batch"].as_str().expect("prev_batch");
    let (_, page) = server
        .get_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=3&from={prev}"),
        )
        .await;
    let ids: Vec<&str> = page["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(ids, [sent[14].as_str(), sent[13].as_str(), sent[12].as_str()]);
    server.stop().await;
}

#[tokio::test]
async fn lazy_loading_sends_only_the_senders_members() {
    let mut server = TestServer::with_options(QUICK).await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    let mut others = Vec::new();
    for index in 0..6 {
        let user = server.register(&format!("member{index}"), "pw").await;
        server.post_as(&user, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
        others.push(user);
    }
    send_text(&server, &others[2], &room, "l1", "from member2").await;
    for index in 0..12 {
        send_text(&server, &alice, &room, &format!("l{index}x"), "filler").await;
    }
    send_text(&server, &others[4], &room, "l2", "from member4").await;
    let filter = encode(r#"{"room":{"timeline":{"limit":5},"state":{"lazy_load_members":true}}}"#);
    let body = sync(&server, &alice, None, &format!("&filter={filter}")).await;
    let joined = &body["rooms"]["join"][room.as_str()];
    let members: Vec<&str> = joined["state"]["events"]
        .as_array()
        .expect("state")
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert!(members.contains(&"@member4:test.local"), "{members:?}");
    assert!(members.contains(&"@alice:test.local"), "own member event: {members:?}");
    assert!(
        !members.contains(&"@member2:test.local") && !members.contains(&"@member0:test.local"),
        "{members:?}"
    );
    assert_eq!(joined["summary"]["m.joined_member_count"], 7);
    assert_eq!(joined["summary"]["m.heroes"].as_array().expect("heroes").len(), 5);
    server.stop().await;
}

#[tokio::test]
async fn filters_select_rooms_types_and_senders() {
    let mut server = TestServer::with_options(QUICK).await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let first = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    let second = create_room(&server, &alice, json!({})).await;
    server.post_as(&bob, &format!("/_matrix/client/v3/join/{first}"), json!({})).await;
    send_text(&server, &bob, &first, "b", "from bob").await;
    send_text(&server, &alice, &first, "a", "from alice").await;
    server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{first}/send/org.example.custom/c"),
            json!({"x": 1}),
        )
        .await;

    let stored = json!({"room": {"rooms": [first], "timeline": {"types": ["m.room.message"], "not_senders": ["@bob:test.local"]}}});
    let (status, created) =
        server.post_as(&alice, "/_matrix/client/v3/user/@alice:test.local/filter", stored).await;
    assert_eq!(status, 200);
    let filter_id = created["filter_id"].as_str().expect("id");
    let body = sync(&server, &alice, None, &format!("&filter={filter_id}")).await;
    assert!(body["rooms"]["join"].get(&second).is_none(), "rooms filter: {body}");
    let events =
        body["rooms"]["join"][first.as_str()]["timeline"]["events"].as_array().expect("events");
    assert!(
        events
            .iter()
            .all(|e| e["type"] == "m.room.message" && e["sender"] == alice.user_id.as_str()),
        "{events:?}"
    );
    assert!(!events.is_empty());

    let (status, body) = server.get_as(&alice, "/_matrix/client/v3/sync?filter=doesnotexist").await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = server.get_as(&alice, "/_matrix/client/v3/sync?since=garbage").await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let wildcard = encode(r#"{"room":{"timeline":{"not_types":["m.room.*"]}}}"#);
    let body = sync(&server, &alice, None, &format!("&filter={wildcard}")).await;
    let events =
        body["rooms"]["join"][first.as_str()]["timeline"]["events"].as_array().expect("events");
    assert!(events.iter().all(|e| e["type"] == "org.example.custom"), "{events:?}");
    server.stop().await;
}

#[tokio::test]
async fn ephemeral_account_data_to_device_and_presence_sections() {
    let mut server = TestServer::with_options(QUICK).await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    server.post_as(&bob, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    let event = send_text(&server, &alice, &room, "e", "read me").await;
    let bob_token =
        sync(&server, &bob, None, "").await["next_batch"].as_str().expect("next").to_owned();

    // Receipts: public reach others, private only their owner.
    let (status, _) = server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event}"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read.private/{event}"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/$nope"),
            json!({}),
        )
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let bob_view = sync(&server, &bob, Some(&bob_token), "").await;
    let receipt = bob_view["rooms"]["join"][room.as_str()]["ephemeral"]["events"]
        .as_array()
        .expect("ephemeral")
        .iter()
        .find(|e| e["type"] == "m.receipt")
        .cloned()
        .expect("receipt event");
    assert!(
        receipt["content"][event.as_str()]["m.read"][alice.user_id.as_str()]["ts"].is_u64(),
        "{receipt}"
    );
    assert!(
        receipt["content"][event.as_str()].get("m.read.private").is_none(),
        "private receipts stay private"
    );
    let alice_view = sync(&server, &alice, None, "").await;
    let own = alice_view["rooms"]["join"][room.as_str()]["ephemeral"]["events"]
        .as_array()
        .expect("ephemeral")
        .iter()
        .find(|e| e["type"] == "m.receipt")
        .cloned()
        .expect("receipt");
    assert!(
        own["content"][event.as_str()]["m.read.private"][alice.user_id.as_str()].is_object(),
        "{own}"
    );

    // read_markers sets m.fully_read.
    let (status, _) = server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/read_markers"),
            json!({"m.fully_read": event}),
        )
        .await;
    assert_eq!(status, 200);
    let marker = sync(&server, &alice, None, "").await;
    let fully_read = marker["rooms"]["join"][room.as_str()]["account_data"]["events"]
        .as_array()
        .expect("account data")
        .iter()
        .find(|e| e["type"] == "m.fully_read")
        .cloned()
        .expect("fully read");
    assert_eq!(fully_read["content"]["event_id"], event.as_str());

    // To-device: delivered once, deleted once acknowledged; idempotent per transaction.
    for _ in 0..2 {
        let (status, _) = server
            .put_as(
                &alice,
                "/_matrix/client/v3/sendToDevice/m.test/txn9",
                json!({"messages": {bob.user_id.clone(): {"*": {"n": 1}}}}),
            )
            .await;
        assert_eq!(status, 200);
    }
    let first = sync(&server, &bob, Some(&bob_token), "").await;
    let messages = first["to_device"]["events"].as_array().expect("to_device");
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["sender"], alice.user_id.as_str());
    let next = first["next_batch"].as_str().expect("next");
    let second = sync(&server, &bob, Some(next), "").await;
    assert!(second["to_device"]["events"].as_array().is_none_or(Vec::is_empty), "{second}");
    // Once a later token was used, the old one no longer brings the message back.
    let retry = sync(&server, &bob, Some(&bob_token), "").await;
    assert!(
        retry["to_device"]["events"].as_array().is_none_or(Vec::is_empty),
        "acknowledged messages are gone: {retry}"
    );

    // Typing notifications have the spec's shape and stop.
    server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id),
            json!({"typing": true, "timeout": 30000}),
        )
        .await;
    let typing = sync(&server, &bob, None, "").await;
    let typing_event = typing["rooms"]["join"][room.as_str()]["ephemeral"]["events"]
        .as_array()
        .expect("ephemeral")
        .iter()
        .find(|e| e["type"] == "m.typing")
        .cloned()
        .expect("typing");
    assert_eq!(typing_event["content"]["user_ids"], json!([alice.user_id]));
    server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id),
            json!({"typing": false}),
        )
        .await;
    let stopped = sync(&server, &bob, typing["next_batch"].as_str(), "").await;
    let typing_event = stopped["rooms"]["join"][room.as_str()]["ephemeral"]["events"]
        .as_array()
        .expect("ephemeral")
        .iter()
        .find(|e| e["type"] == "m.typing")
        .cloned()
        .expect("typing");
    assert_eq!(typing_event["content"]["user_ids"], json!([]));
    let (status, body) = server
        .put_as(
            &bob,
            &format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id),
            json!({"typing": true}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");

    // Presence of someone sharing a room.
    server
        .put_as(
            &alice,
            "/_matrix/client/v3/presence/@alice:test.local/status",
            json!({"presence": "online", "status_msg": "here"}),
        )
        .await;
    let (status, presence) =
        server.get_as(&bob, "/_matrix/client/v3/presence/@alice:test.local/status").await;
    assert_eq!(status, 200, "{presence}");
    assert_eq!(presence["presence"], "online");
    assert_eq!(presence["status_msg"], "here");
    assert!(presence["last_active_ago"].is_u64());
    let stranger = server.register("stranger", "pw").await;
    let (status, body) =
        server.get_as(&stranger, "/_matrix/client/v3/presence/@alice:test.local/status").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = server
        .put_as(
            &bob,
            "/_matrix/client/v3/presence/@alice:test.local/status",
            json!({"presence": "offline"}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    server.stop().await;
}

#[tokio::test]
async fn a_sync_token_survives_a_restart() {
    let mut server = TestServer::with_options(QUICK).await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({})).await;
    let token =
        sync(&server, &alice, None, "").await["next_batch"].as_str().expect("next").to_owned();
    server.restart().await;
    let after = send_text(&server, &alice, &room, "r", "after restart").await;
    let body = sync(&server, &alice, Some(&token), "").await;
    assert_eq!(timeline_ids(&body, &room), [after]);
    server.stop().await;
}

#[tokio::test]
async fn ignoring_a_user_hides_their_events_from_the_next_sync() {
    let mut server = TestServer::with_options(QUICK).await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    for user in [&bob, &carol] {
        let (status, body) =
            server.post_as(user, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    let ignore_list =
        format!("/_matrix/client/v3/user/{}/account_data/m.ignored_user_list", alice.user_id);
    // Alice's syncs have already read her (empty) ignore list when she starts ignoring Bob.
    let mut since =
        sync(&server, &alice, None, "").await["next_batch"].as_str().expect("next").to_owned();
    for (round, ignored) in
        [json!({"bob": {}}), json!({bob.user_id.clone(): {}}), json!({})].into_iter().enumerate()
    {
        let (status, body) =
            server.put_as(&alice, &ignore_list, json!({"ignored_users": ignored})).await;
        assert_eq!(status, 200, "{body}");
        let from_bob = send_text(&server, &bob, &room, &format!("b{round}"), "from bob").await;
        let from_carol =
            send_text(&server, &carol, &room, &format!("c{round}"), "from carol").await;
        let body = sync(&server, &alice, Some(&since), "").await;
        let seen = timeline_ids(&body, &room);
        assert!(seen.contains(&from_carol), "round {round}: {body}");
        let bob_ignored = ignored.get(bob.user_id.as_str()).is_some();
        assert_eq!(seen.contains(&from_bob), !bob_ignored, "round {round}: {body}");
        since = body["next_batch"].as_str().expect("next").to_owned();
    }
    server.stop().await;
}
