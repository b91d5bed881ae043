//! Push rules, unread counts, the notification list and pushers delivering to a gateway on
//! loopback.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::post};
use serde_json::{Value, json};

use crate::{
    common::{TestServer, User, assert_error, wait_until},
    rooms::{create_room, send_text},
    sync::sync,
};

fn counts(body: &Value, room: &str) -> (u64, u64) {
    let unread = &body["rooms"]["join"][room]["unread_notifications"];
    (
        unread["notification_count"].as_u64().unwrap_or(0),
        unread["highlight_count"].as_u64().unwrap_or(0),
    )
}

/// Alice and Bob, registered in that order, and a public room Alice made and Bob joined.
async fn alice_and_bob_in_a_public_room(server: &TestServer) -> (User, User, String) {
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(server, &alice, json!({"preset": "public_chat"})).await;
    let (status, body) =
        server.post_as(&bob, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    (alice, bob, room)
}

/// The event ids in `user`'s notification list, newest first (`query`: e.g. `?only=highlight`).
async fn notified_event_ids(server: &TestServer, user: &User, query: &str) -> Vec<String> {
    let (status, list) =
        server.get_as(user, &format!("/_matrix/client/v3/notifications{query}")).await;
    assert_eq!(status, 200, "{list}");
    list["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .filter_map(|item| item["event"]["event_id"].as_str().map(str::to_owned))
        .collect()
}

/// Syncs until the room's counts are `expected` (they are written just after the event, so
/// a sync racing the send may see the event first), or fails after a few seconds.
async fn counts_become(
    server: &TestServer,
    user: &User,
    since: Option<&str>,
    extra: &str,
    room: &str,
    expected: (u64, u64),
) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        last = sync(server, user, since, extra).await;
        if last["rooms"]["join"][room].is_object() && counts(&last, room) == expected {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("counts never became {expected:?}: {}", last["rooms"]["join"][room]);
}

async fn send(server: &TestServer, user: &User, room: &str, txn: &str, content: Value) -> String {
    let (status, body) = server
        .put_as(
            user,
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            content,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["event_id"].as_str().expect("event id").to_owned()
}

#[tokio::test]
async fn default_rules_drive_counts_that_receipts_reset() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room =
        create_room(&server, &alice, json!({"preset": "public_chat", "name": "Group"})).await;
    for user in [&bob, &carol] {
        server.post_as(user, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    }

    // Defaults are there from the start, in /pushrules and in sync account data.
    let (status, rules) = server.get_as(&bob, "/_matrix/client/v3/pushrules/").await;
    assert_eq!(status, 200, "{rules}");
    let overrides: Vec<&str> = rules["global"]["override"]
        .as_array()
        .expect("override")
        .iter()
        .filter_map(|rule| rule["rule_id"].as_str())
        .collect();
    for rule in [
        ".m.rule.master",
        ".m.rule.suppress_notices",
        ".m.rule.is_user_mention",
        ".m.rule.is_room_mention",
    ] {
        assert!(overrides.contains(&rule), "{rule} missing: {overrides:?}");
    }
    let initial = sync(&server, &bob, None, "").await;
    assert!(
        initial["account_data"]["events"]
            .as_array()
            .expect("account data")
            .iter()
            .any(|event| event["type"] == "m.push_rules")
    );
    let token = initial["next_batch"].as_str().expect("next").to_owned();

    // A plain message notifies; a mention highlights; a notice does not notify.
    send_text(&server, &alice, &room, "p1", "hello all").await;
    let mention = send(&server, &alice, &room, "p2", json!({"msgtype": "m.text", "body": "bob: look", "m.mentions": {"user_ids": [bob.user_id]}})).await;
    send(&server, &alice, &room, "p3", json!({"msgtype": "m.notice", "body": "bot says"})).await;
    let view = counts_become(&server, &bob, Some(&token), "", &room, (2, 1)).await;
    let alice_view = sync(&server, &alice, None, "").await;
    assert_eq!(counts(&alice_view, &room), (0, 0), "own messages never count");

    // The notification list shows them, newest first, with highlight filtering.
    let (status, list) = server.get_as(&bob, "/_matrix/client/v3/notifications").await;
    assert_eq!(status, 200, "{list}");
    let notifications = list["notifications"].as_array().expect("notifications");
    assert_eq!(notifications.len(), 2, "{list}");
    assert_eq!(notifications[0]["event"]["event_id"], mention.as_str());
    assert_eq!(notifications[0]["read"], false);
    let (_, highlights) =
        server.get_as(&bob, "/_matrix/client/v3/notifications?only=highlight").await;
    assert_eq!(highlights["notifications"].as_array().map(Vec::len), Some(1));
    let (_, page) = server.get_as(&bob, "/_matrix/client/v3/notifications?limit=1").await;
    let next = page["next_token"].as_str().expect("next token").to_owned();
    let (_, rest) =
        server.get_as(&bob, &format!("/_matrix/client/v3/notifications?from={next}")).await;
    assert_eq!(rest["notifications"].as_array().map(Vec::len), Some(1), "{rest}");
    let (status, body) = server.get_as(&bob, "/_matrix/client/v3/notifications?from=soon").await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");

    // Reading up to the mention clears both.
    let token = view["next_batch"].as_str().expect("next").to_owned();
    let (status, _) = server
        .post_as(
            &bob,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{mention}"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    counts_become(&server, &bob, Some(&token), "", &room, (0, 0)).await;
    let (_, list) = server.get_as(&bob, "/_matrix/client/v3/notifications").await;
    assert_eq!(list["notifications"][0]["read"], true);
    server.stop().await;
}

#[tokio::test]
async fn one_to_one_rooms_encrypted_rooms_and_keywords() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let direct = create_room(
        &server,
        &alice,
        json!({"preset": "trusted_private_chat", "invite": [bob.user_id], "is_direct": true}),
    )
    .await;
    server.post_as(&bob, &format!("/_matrix/client/v3/join/{direct}"), json!({})).await;
    let (status, body) = server
        .put_as(&alice, &format!("/_matrix/client/v3/rooms/{direct}/send/m.room.encrypted/e1"), json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x", "sender_key": "k", "session_id": "s", "device_id": "D"}))
        .await;
    assert_eq!(status, 200, "{body}");
    send_text(&server, &alice, &direct, "d1", "just us").await;
    let view = counts_become(&server, &bob, None, "", &direct, (2, 0)).await;

    // A keyword rule of Bob's highlights.
    let (status, body) = server
        .put_as(
            &bob,
            "/_matrix/client/v3/pushrules/global/content/pineapple",
            json!({"pattern": "pineapple", "actions": ["notify", {"set_tweak": "highlight"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let token = view["next_batch"].as_str().expect("next").to_owned();
    send_text(&server, &alice, &direct, "d2", "I like pineapple pizza").await;
    counts_become(&server, &bob, Some(&token), "", &direct, (3, 1)).await;
    server.stop().await;
}

#[tokio::test]
async fn thread_counts_are_separate_and_reset_by_threaded_receipts() {
    let mut server = TestServer::start().await;
    let (alice, bob, room) = alice_and_bob_in_a_public_room(&server).await;
    let root = send_text(&server, &alice, &room, "t0", "root").await;
    let mut last_reply = String::new();
    for index in 0..2 {
        last_reply = send(
            &server,
            &alice,
            &room,
            &format!("t{}", index + 1),
            json!({
                "msgtype": "m.text", "body": format!("reply {index}"),
                "m.relates_to": {"rel_type": "m.thread", "event_id": root},
            }),
        )
        .await;
    }
    let filter = "&filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22unread_thread_notifications%22%3Atrue%7D%7D%7D";
    counts_become(&server, &bob, None, "", &room, (3, 0)).await;
    let view = sync(&server, &bob, None, filter).await;
    let joined = &view["rooms"]["join"][&room];
    assert_eq!(joined["unread_notifications"]["notification_count"], 1, "main timeline: {joined}");
    assert_eq!(joined["unread_thread_notifications"][&root]["notification_count"], 2, "{joined}");
    counts_become(&server, &bob, None, "", &room, (3, 0)).await;

    // A receipt in the thread clears the thread only.
    let token = view["next_batch"].as_str().expect("next").to_owned();
    let (status, _) = server
        .post_as(
            &bob,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{last_reply}"),
            json!({"thread_id": root}),
        )
        .await;
    assert_eq!(status, 200);
    let view = sync(&server, &bob, Some(&token), filter).await;
    let joined = &view["rooms"]["join"][&room];
    assert_eq!(joined["unread_notifications"]["notification_count"], 1, "{joined}");
    assert!(joined["unread_thread_notifications"].get(&root).is_none(), "{joined}");
    server.stop().await;
}

#[tokio::test]
async fn push_rule_crud_and_ordering() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let base = "/_matrix/client/v3/pushrules/global";
    let rule = |pattern: &str| json!({"pattern": pattern, "actions": ["notify"]});
    for (id, query) in [("first", ""), ("second", "?before=first"), ("third", "?after=first")] {
        let (status, body) =
            server.put_as(&alice, &format!("{base}/content/{id}{query}"), rule(id)).await;
        assert_eq!(status, 200, "{id}: {body}");
    }
    let (_, all) = server.get_as(&alice, "/_matrix/client/v3/pushrules/").await;
    let order: Vec<&str> = all["global"]["content"]
        .as_array()
        .expect("content")
        .iter()
        .filter_map(|rule| rule["rule_id"].as_str())
        .filter(|id| !id.starts_with('.'))
        .collect();
    assert_eq!(order, ["second", "first", "third"]);

    let (status, body) =
        server.put_as(&alice, &format!("{base}/content/fourth?before=nope"), rule("x")).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) =
        server.put_as(&alice, &format!("{base}/content/.m.custom"), rule("x")).await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = server
        .put_as(&alice, &format!("{base}/content/nopattern"), json!({"actions": ["notify"]}))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.put_as(&alice, &format!("{base}/override/cond"), json!({"conditions": [{"kind": "event_match", "key": "type", "pattern": "m.call.*"}], "actions": []})).await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = server.get_as(&alice, &format!("{base}/content/first")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pattern"], "first");
    let (status, body) = server
        .put_as(&alice, &format!("{base}/content/first/enabled"), json!({"enabled": false}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = server.get_as(&alice, &format!("{base}/content/first/enabled")).await;
    assert_eq!(body["enabled"], false);
    let (status, _) = server
        .put_as(
            &alice,
            &format!("{base}/override/.m.rule.master/enabled"),
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(status, 200, "default rules can be switched");
    let (status, _) = server
        .put_as(
            &alice,
            &format!("{base}/content/first/actions"),
            json!({"actions": ["notify", {"set_tweak": "sound", "value": "ping"}]}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) = server.get_as(&alice, &format!("{base}/content/first/actions")).await;
    assert_eq!(body["actions"][1]["value"], "ping", "{body}");
    let (status, body) = server.get_as(&alice, &format!("{base}/content/missing/actions")).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    let (status, _) = server.delete_as(&alice, &format!("{base}/content/first"), json!({})).await;
    assert_eq!(status, 200);
    let (status, body) =
        server.delete_as(&alice, &format!("{base}/content/first"), json!({})).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) =
        server.delete_as(&alice, &format!("{base}/override/.m.rule.master"), json!({})).await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = server
        .put_as(
            &alice,
            "/_matrix/client/v3/user/@alice:test.local/account_data/m.push_rules",
            json!({"global": {}}),
        )
        .await;
    assert_eq!(status, 405, "{body}");
    server.stop().await;
}

/// A push gateway on loopback recording what it receives and rejecting chosen pushkeys.
#[derive(Clone, Default)]
struct Gateway {
    received: Arc<Mutex<Vec<Value>>>,
    reject: Arc<Mutex<Vec<String>>>,
}

async fn notify(State(gateway): State<Gateway>, Json(body): Json<Value>) -> Json<Value> {
    let pushkey =
        body["notification"]["devices"][0]["pushkey"].as_str().unwrap_or_default().to_owned();
    gateway.received.lock().expect("lock").push(body);
    let rejected: Vec<String> = gateway
        .reject
        .lock()
        .expect("lock")
        .iter()
        .filter(|key| **key == pushkey)
        .cloned()
        .collect();
    Json(json!({"rejected": rejected}))
}

async fn start_gateway() -> (Gateway, String) {
    let gateway = Gateway::default();
    let app =
        Router::new().route("/_matrix/push/v1/notify", post(notify)).with_state(gateway.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (gateway, format!("http://{address}/_matrix/push/v1/notify"))
}

#[tokio::test]
async fn pushers_deliver_to_the_gateway_and_rejected_ones_are_removed() {
    // The default ip_range_denylist covers loopback; the allowlist exempts this gateway.
    let mut server = TestServer::with_options(&["push_gateway_allowlist=[\"127.0.0.1\"]"]).await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room =
        create_room(&server, &alice, json!({"preset": "public_chat", "name": "Pushy"})).await;
    server.post_as(&bob, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    let (gateway, url) = start_gateway().await;

    let pusher = |pushkey: &str, format: Option<&str>| {
        let mut data = json!({"url": url});
        if let Some(format) = format {
            data["format"] = json!(format);
        }
        json!({"kind": "http", "app_id": "org.example.app", "pushkey": pushkey, "app_display_name": "App", "device_display_name": "Phone", "lang": "en", "data": data})
    };
    let (status, body) =
        server.post_as(&bob, "/_matrix/client/v3/pushers/set", pusher("key-full", None)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .post_as(&bob, "/_matrix/client/v3/pushers/set", {
            let mut bad = pusher("bad", None);
            bad["data"]["url"] = json!("http://127.0.0.1:1/somewhere");
            bad
        })
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (_, list) = server.get_as(&bob, "/_matrix/client/v3/pushers").await;
    assert_eq!(list["pushers"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list["pushers"][0]["pushkey"], "key-full");

    let event = send_text(&server, &alice, &room, "push1", "ring ring").await;
    let received = gateway.received.clone();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            !received.lock().expect("lock").is_empty()
        })
        .await,
        "the gateway was called"
    );
    let notification = gateway.received.lock().expect("lock")[0]["notification"].clone();
    assert_eq!(notification["event_id"], event.as_str());
    assert_eq!(notification["room_id"], room.as_str());
    assert_eq!(notification["type"], "m.room.message");
    assert_eq!(notification["sender"], alice.user_id.as_str());
    assert_eq!(notification["room_name"], "Pushy");
    assert_eq!(notification["content"]["body"], "ring ring");
    assert_eq!(notification["counts"]["unread"], 1);
    assert_eq!(notification["devices"][0]["app_id"], "org.example.app");
    assert!(
        notification["devices"][0]["data"].get("url").is_none(),
        "the url is not echoed: {notification}"
    );

    // event_id_only leaves the content out; a rejected pushkey removes the pusher.
    let (status, _) = server
        .post_as(&bob, "/_matrix/client/v3/pushers/set", pusher("key-gone", Some("event_id_only")))
        .await;
    assert_eq!(status, 200);
    gateway.reject.lock().expect("lock").push("key-gone".to_owned());
    send_text(&server, &alice, &room, "push2", "second").await;
    let received = gateway.received.clone();
    assert!(
        wait_until(Duration::from_secs(10), || async { received.lock().expect("lock").len() >= 3 })
            .await
    );
    let minimal = gateway
        .received
        .lock()
        .expect("lock")
        .iter()
        .find(|body| body["notification"]["devices"][0]["pushkey"] == "key-gone")
        .cloned()
        .expect("event_id_only push");
    assert!(minimal["notification"].get("content").is_none(), "{minimal}");
    let server_ref = &server;
    let bob_ref = &bob;
    assert!(
        wait_until(Duration::from_secs(10), || async move {
            let (_, list) = server_ref.get_as(bob_ref, "/_matrix/client/v3/pushers").await;
            list["pushers"].as_array().is_some_and(|pushers| pushers.len() == 1)
        })
        .await,
        "the rejected pusher is removed"
    );

    // Deleting with kind null, and deactivation removes the rest.
    let (status, _) = server
        .post_as(
            &bob,
            "/_matrix/client/v3/pushers/set",
            json!({"kind": null, "app_id": "org.example.app", "pushkey": "key-full"}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, list) = server.get_as(&bob, "/_matrix/client/v3/pushers").await;
    assert_eq!(list["pushers"], json!([]));
    server.stop().await;
}

/// The value of `tuwunel_push_failures_total{reason="denied"}` on the metrics page.
async fn denied_pushes(server: &TestServer) -> u64 {
    let response = server.client.get(server.url("/metrics")).send().await.expect("request");
    let text = response.text().await.expect("metrics text");
    text.lines()
        .find(|line| line.starts_with("tuwunel_push_failures_total{reason=\"denied\"}"))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn gateways_in_the_ip_range_denylist_are_not_contacted() {
    let mut server = TestServer::with_options(&["metrics_enabled=true"]).await;
    let (alice, bob, room) = alice_and_bob_in_a_public_room(&server).await;
    let (gateway, url) = start_gateway().await;
    let (status, body) = server
        .post_as(
            &bob,
            "/_matrix/client/v3/pushers/set",
            json!({"kind": "http", "app_id": "org.example.app", "pushkey": "k", "app_display_name": "App", "device_display_name": "Phone", "lang": "en", "data": {"url": url}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Each notification is dropped (counted as denied), not retried, and the pusher stays.
    let before = denied_pushes(&server).await;
    send_text(&server, &alice, &room, "deny1", "one").await;
    send_text(&server, &alice, &room, "deny2", "two").await;
    let server_ref = &server;
    assert!(
        wait_until(Duration::from_secs(10), || async move {
            denied_pushes(server_ref).await >= before + 2
        })
        .await,
        "both pushes were refused"
    );
    assert!(gateway.received.lock().expect("lock").is_empty(), "the gateway was never called");
    let (_, list) = server.get_as(&bob, "/_matrix/client/v3/pushers").await;
    assert_eq!(list["pushers"].as_array().map(Vec::len), Some(1), "{list}");
    server.stop().await;
}

#[tokio::test]
async fn a_redacted_display_name_no_longer_highlights() {
    let mut server = TestServer::start().await;
    let (alice, bob, room) = alice_and_bob_in_a_public_room(&server).await;
    let (status, body) = server
        .put_as(
            &bob,
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{}", bob.user_id),
            json!({"membership": "join", "displayname": "Bobby"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let member_event = body["event_id"].as_str().expect("event id").to_owned();
    // The spec's deprecated display-name rule, which the defaults no longer carry.
    let (status, body) = server
        .put_as(
            &bob,
            "/_matrix/client/v3/pushrules/global/override/display_name",
            json!({
                "conditions": [{"kind": "contains_display_name"}],
                "actions": ["notify", {"set_tweak": "highlight"}],
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let before = send_text(&server, &alice, &room, "n1", "hi Bobby").await;
    assert!(
        notified_event_ids(&server, &bob, "?only=highlight").await.contains(&before),
        "the display name highlights"
    );

    // The redaction strips the display name from Bob's current member event.
    let (status, body) = server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/redact/{member_event}/r1"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let after = send_text(&server, &alice, &room, "n2", "hi Bobby again").await;
    let list = notified_event_ids(&server, &bob, "?only=highlight").await;
    assert!(list.contains(&before) && !list.contains(&after), "{list:?}");
    server.stop().await;
}

#[tokio::test]
async fn notifications_past_the_retention_are_pruned_and_counts_stay() {
    let (mut server, clock) = TestServer::with_clock(&[]).await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    for user in [&bob, &carol] {
        server.post_as(user, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    }
    let mut old = Vec::new();
    for index in 0..3 {
        old.push(send_text(&server, &alice, &room, &format!("o{index}"), "old news").await);
    }
    clock.advance(Duration::from_millis(2100));
    let recent = send_text(&server, &alice, &room, "r", "recent news").await;
    let storage = &server.server().services().storage;
    let now = clock.time().now_ms();

    // Zero keeps everything.
    assert_eq!(
        tuwunel::push::retention::purge_notifications(storage, 0, now).await.expect("purge"),
        0
    );
    // Two seconds: the three older entries of each of Bob and Carol go, and Alice's invite
    // to the admin room (the first user becomes an admin). Two rows per commit, so the purge
    // also resumes after full batches.
    let purged = tuwunel::push::retention::purge_notifications_in_chunks(storage, 2, now, 2)
        .await
        .expect("purge");
    assert_eq!(purged, 7);
    assert!(notified_event_ids(&server, &alice, "").await.is_empty());
    for user in [&bob, &carol] {
        assert_eq!(
            notified_event_ids(&server, user, "").await,
            vec![recent.clone()],
            "{}",
            user.user_id
        );
    }
    // Unread counts are kept apart and still count every unread message.
    let body = sync(&server, &bob, None, "").await;
    assert_eq!(counts(&body, &room).0, 4, "{body}");
    assert_eq!(
        tuwunel::push::retention::purge_notifications(storage, 2, now).await.expect("purge"),
        0
    );
    server.stop().await;
}

/// Rule ids of one kind, in the order served.
fn rule_ids(rules: &Value, kind: &str) -> Vec<String> {
    rules[kind]
        .as_array()
        .unwrap_or_else(|| panic!("{kind} is not a list: {rules}"))
        .iter()
        .filter_map(|rule| rule["rule_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn legacy_mention_rules_are_served_where_synapse_serves_them_and_work() {
    let mut server = TestServer::start().await;
    let (alice, bob, room) = alice_and_bob_in_a_public_room(&server).await;
    let (status, rules) = server.get_as(&bob, "/_matrix/client/v3/pushrules/global/").await;
    assert_eq!(status, 200, "{rules}");
    // Synapse's order: the legacy rules right after their m.mentions successors.
    assert_eq!(
        rule_ids(&rules, "override"),
        [
            ".m.rule.master",
            ".m.rule.suppress_notices",
            ".m.rule.invite_for_me",
            ".m.rule.member_event",
            ".m.rule.is_user_mention",
            ".m.rule.contains_display_name",
            ".m.rule.is_room_mention",
            ".m.rule.roomnotif",
            ".m.rule.tombstone",
            ".m.rule.reaction",
            ".m.rule.room.server_acl",
            ".m.rule.suppress_edits",
        ]
    );
    assert_eq!(rule_ids(&rules, "content"), [".m.rule.contains_user_name"]);
    assert_eq!(rules["content"][0]["pattern"], "bob");
    // Every kind is listed, empty or not.
    for kind in ["override", "content", "room", "sender", "underride"] {
        assert!(rules[kind].is_array(), "{kind} missing: {rules}");
    }
    assert_eq!(rules["room"], json!([]));

    // A plain display-name mention (no m.mentions) highlights, as does the user name and @room
    // from someone allowed to notify the room.
    let (status, body) = server
        .put_as(
            &bob,
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{}", bob.user_id),
            json!({"membership": "join", "displayname": "Roberto"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let by_name = send_text(&server, &alice, &room, "l1", "Roberto, look at this").await;
    let by_user_name = send_text(&server, &alice, &room, "l2", "ping bob please").await;
    let by_room = send_text(&server, &alice, &room, "l3", "@room meeting now").await;
    // With m.mentions present the legacy rules stand aside.
    let with_mentions = send(
        &server,
        &alice,
        &room,
        "l4",
        json!({"msgtype": "m.text", "body": "Roberto again", "m.mentions": {}}),
    )
    .await;
    let highlights = notified_event_ids(&server, &bob, "?only=highlight").await;
    for (what, event) in [("name", &by_name), ("user name", &by_user_name), ("@room", &by_room)] {
        assert!(highlights.contains(event), "{what} did not highlight: {highlights:?}");
    }
    assert!(!highlights.contains(&with_mentions), "{highlights:?}");

    // They can be disabled, and their actions changed, like Element's settings do.
    let rule = "/_matrix/client/v3/pushrules/global/override/.m.rule.contains_display_name";
    let (status, body) =
        server.put_as(&bob, &format!("{rule}/enabled"), json!({"enabled": false})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.get_as(&bob, &format!("{rule}/enabled")).await;
    assert_eq!((status, &body["enabled"]), (200, &json!(false)));
    let quiet = send_text(&server, &alice, &room, "l5", "Roberto, quietly").await;
    assert!(!notified_event_ids(&server, &bob, "?only=highlight").await.contains(&quiet));
    let (status, body) =
        server.put_as(&bob, &format!("{rule}/enabled"), json!({"enabled": true})).await;
    assert_eq!(status, 200, "{body}");
    let user_name_rule = "/_matrix/client/v3/pushrules/global/content/.m.rule.contains_user_name";
    let (status, body) =
        server.put_as(&bob, &format!("{user_name_rule}/actions"), json!({"actions": []})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.get_as(&bob, &format!("{user_name_rule}/actions")).await;
    assert_eq!((status, body), (200, json!({"actions": []})));
    let (_, body) =
        server.get_as(&bob, "/_matrix/client/v3/pushrules/global/override/.m.rule.roomnotif").await;
    assert_eq!(body["rule_id"], ".m.rule.roomnotif", "{body}");
    assert_eq!(body["default"], true, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn push_rules_come_back_as_written() {
    let mut server = TestServer::start().await;
    let bob = server.register("bob", "pw").await;
    let actions = json!(["notify", {"set_tweak": "highlight", "value": true}, {"set_tweak": "sound", "value": "default"}]);
    let (status, body) = server
        .put_as(
            &bob,
            "/_matrix/client/v3/pushrules/global/room/!someroom:test.local",
            json!({ "actions": actions }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, rule) =
        server.get_as(&bob, "/_matrix/client/v3/pushrules/global/room/!someroom:test.local").await;
    assert_eq!(rule["actions"], actions, "{rule}");
    let (_, all) = server.get_as(&bob, "/_matrix/client/v3/pushrules/").await;
    assert_eq!(all["global"]["room"][0]["actions"], actions, "{all}");
    // Toggling another rule keeps it; so does a restart.
    let (status, _) = server
        .put_as(
            &bob,
            "/_matrix/client/v3/pushrules/global/override/.m.rule.master/enabled",
            json!({"enabled": false}),
        )
        .await;
    assert_eq!(status, 200);
    server.restart().await;
    let bob = server.login("bob", "pw").await;
    let (_, actions_only) = server
        .get_as(&bob, "/_matrix/client/v3/pushrules/global/room/!someroom:test.local/actions")
        .await;
    assert_eq!(actions_only, json!({ "actions": actions }));
    // Actions changed to mean something else are served as newly written.
    let quieter = json!(["notify", {"set_tweak": "highlight", "value": false}]);
    let (status, _) = server
        .put_as(
            &bob,
            "/_matrix/client/v3/pushrules/global/room/!someroom:test.local/actions",
            json!({ "actions": quieter }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, rule) =
        server.get_as(&bob, "/_matrix/client/v3/pushrules/global/room/!someroom:test.local").await;
    assert_eq!(rule["actions"], quieter, "{rule}");
    // Sync's account data carries the same.
    let view = sync(&server, &bob, None, "").await;
    let stored = view["account_data"]["events"]
        .as_array()
        .expect("account data")
        .iter()
        .find(|event| event["type"] == "m.push_rules")
        .cloned()
        .expect("m.push_rules");
    assert_eq!(stored["content"]["global"]["room"][0]["actions"], quieter, "{stored}");
    assert!(stored["content"]["global"]["sender"].is_array(), "{stored}");
    server.stop().await;
}
