//! What one hostile user or one sloppy client could do (issue 19): JSON nested deep enough to
//! store records the server's own readers refuse, content that panicked ruma inside a room's
//! actor, sizes beyond the spec's limits, lenient parsing. Each attack is reproduced and must
//! be refused without writing anything; stored records that cannot be read are skipped by
//! `/sync` instead of failing it.

use reqwest::Method;
use serde_json::{Value, json};
use tuwunel::storage::{
    Batch,
    account_data::{ACCOUNT_DATA_STREAM_TABLE, ACCOUNT_DATA_TABLE, AccountDataRecord},
    codec::{Json, Prefix},
    ephemeral::{TO_DEVICE_TABLE, ToDeviceRecord},
};

use crate::common::{TestServer, User, assert_error, status_and_json};

/// An object nested `depth` levels (`{}` is one level).
fn nested(depth: usize) -> Value {
    let mut value = json!({});
    for _ in 1..depth {
        value = json!({ "a": value });
    }
    value
}

/// Sends `body` as it is, bytes and all.
async fn send_raw(
    server: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut request = server
        .client
        .request(method, server.url(path))
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    status_and_json(request.send().await.expect("request")).await
}

async fn sync(server: &TestServer, user: &User, since: Option<&str>) -> (u16, Value) {
    let path = match since {
        Some(since) => format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
        None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
    };
    server.get_as(user, &path).await
}

async fn create_room(server: &TestServer, user: &User, body: Value) -> String {
    let (status, body) = server.post_as(user, "/_matrix/client/v3/createRoom", body).await;
    assert_eq!(status, 200, "{body}");
    body["room_id"].as_str().expect("room_id").to_owned()
}

#[tokio::test]
async fn deep_to_device_messages_are_refused_and_the_victims_sync_survives() {
    let mut server = TestServer::start().await;
    let attacker = server.register("mallory", "p").await;
    let victim = server.register("victim", "p").await;
    let (status, _) = sync(&server, &victim, None).await;
    assert_eq!(status, 200);

    // The issue's attack: 127 levels inside the message, stored one level deeper.
    let body = json!({ "messages": { victim.user_id.clone(): { "*": nested(127) } } });
    let (status, body) = server
        .put_as(&attacker, "/_matrix/client/v3/sendToDevice/m.room.encrypted/deep1", body)
        .await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let (status, body) = sync(&server, &victim, None).await;
    assert_eq!(status, 200, "{body}");

    // A message as deep as the limit allows is delivered and read back.
    let body =
        json!({ "messages": { victim.user_id.clone(): { victim.device_id.clone(): nested(60) } } });
    let (status, body) = server
        .put_as(&attacker, "/_matrix/client/v3/sendToDevice/m.room.encrypted/deep2", body)
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = sync(&server, &victim, None).await;
    assert_eq!(status, 200, "{body}");
    let events = body["to_device"]["events"].as_array().expect("to-device events");
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["content"], nested(60));
    server.stop().await;
}

#[tokio::test]
async fn deep_account_data_is_refused_and_sync_survives() {
    let mut server = TestServer::start().await;
    let user = server.register("hoarder", "p").await;
    let room = create_room(&server, &user, json!({})).await;
    let global = format!("/_matrix/client/v3/user/{}/account_data/org.example.deep", user.user_id);
    let in_room = format!(
        "/_matrix/client/v3/user/{}/rooms/{room}/account_data/org.example.deep",
        user.user_id
    );
    for path in [&global, &in_room] {
        let (status, body) = server.put_as(&user, path, nested(127)).await;
        assert_error(status, &body, 400, "M_BAD_JSON");
        let (status, body) = server.get_as(&user, path).await;
        assert_error(status, &body, 404, "M_NOT_FOUND");
    }
    let (status, body) = sync(&server, &user, None).await;
    assert_eq!(status, 200, "{body}");

    // Deeper than serde_json parses at all: still refused, not a parser failure.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, body) = send_raw(&server, Method::PUT, &global, Some(&user.token), deep).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    server.stop().await;
}

#[tokio::test]
async fn unreadable_stored_records_are_skipped_by_sync_and_counted() {
    let mut server = TestServer::with_options(&["metrics_enabled=true"]).await;
    let sender = server.register("oldsender", "p").await;
    let user = server.register("poisoned", "p").await;
    let (status, first) = sync(&server, &user, None).await;
    assert_eq!(status, 200, "{first}");
    let since = first["next_batch"].as_str().expect("next_batch").to_owned();

    // Records as an older version stored them: one level deeper than serde_json parses.
    let storage = std::sync::Arc::clone(&server.server().services().storage);
    let (user_id, device) = (user.id(), user.device());
    let sender_id = ruma::OwnedUserId::try_from(sender.user_id.as_str()).expect("user id");
    storage
        .writer()
        .commit_with_positions(3, Batch::new(), move |batch, positions| {
            let mut positions = positions.into_iter();
            let (first, second, third) = (
                positions.next().expect("position"),
                positions.next().expect("position"),
                positions.next().expect("position"),
            );
            let key = (user_id.clone(), String::new(), "org.example.poison".to_owned());
            ACCOUNT_DATA_TABLE.put(
                batch,
                &key,
                &Json(AccountDataRecord { position: first, content: nested(130) }),
            );
            ACCOUNT_DATA_STREAM_TABLE.put(
                batch,
                &(user_id.clone(), first),
                &Json((String::new(), "org.example.poison".to_owned())),
            );
            TO_DEVICE_TABLE.put(
                batch,
                &(user_id.clone(), device.clone(), second),
                &Json(ToDeviceRecord {
                    sender: sender_id.clone(),
                    kind: "m.poison".to_owned(),
                    content: nested(130),
                }),
            );
            TO_DEVICE_TABLE.put(
                batch,
                &(user_id, device, third),
                &Json(ToDeviceRecord {
                    sender: sender_id,
                    kind: "m.fine".to_owned(),
                    content: json!({ "ok": true }),
                }),
            );
        })
        .await
        .expect("commit");

    // Incremental and initial syncs answer, without the unreadable records.
    let (status, body) = sync(&server, &user, Some(&since)).await;
    assert_eq!(status, 200, "{body}");
    let kinds: Vec<&str> = body["to_device"]["events"]
        .as_array()
        .expect("to-device events")
        .iter()
        .filter_map(|event| event["type"].as_str())
        .collect();
    assert_eq!(kinds, ["m.fine"], "{body}");
    let next = body["next_batch"].as_str().expect("next_batch").to_owned();
    let (status, body) = sync(&server, &user, None).await;
    assert_eq!(status, 200, "{body}");
    let path = format!("/_matrix/client/v3/user/{}/account_data/org.example.poison", user.user_id);
    let (status, body) = server.get_as(&user, &path).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    // Syncing past them acknowledges them: the unreadable message is deleted too.
    let (status, _) = sync(&server, &user, Some(&next)).await;
    assert_eq!(status, 200);
    let mut left = 0;
    TO_DEVICE_TABLE
        .scan_keys(
            storage.engine(),
            &Prefix::of2(&user.id(), &user.device()),
            None,
            tuwunel::storage::Direction::Forward,
            |_| {
                left += 1;
                std::ops::ControlFlow::Continue(())
            },
        )
        .expect("scan");
    assert_eq!(left, 0);

    // The account data can be replaced with something readable.
    let (status, body) = server.put_as(&user, &path, json!({ "fixed": true })).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.get_as(&user, &path).await;
    assert_eq!((status, &body["fixed"]), (200, &json!(true)), "{body}");

    let text = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for table in ["account_data", "to_device"] {
        let series = format!("tuwunel_storage_undecodable_records_total{{table=\"{table}\"}}");
        assert!(text.contains(&series), "{series} missing from:\n{text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn deep_message_content_cannot_take_a_room_down() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "p").await;
    let bob = server.register("bob", "p").await;
    let room = create_room(&server, &alice, json!({ "preset": "public_chat" })).await;
    let (status, body) =
        server.post_as(&bob, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    assert_eq!(status, 200, "{body}");

    // Content of 127 levels (as deep as serde_json parses) made the event one level deeper,
    // and ruma's push evaluation for Bob panicked on it inside the room's actor.
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/deep");
    let (status, body) = server.put_as(&alice, &path, nested(127)).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    for txn in 0..3 {
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/ok{txn}");
        let (status, body) = server
            .put_as(&alice, &path, json!({ "msgtype": "m.text", "body": "still here" }))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // Content at the depth limit is accepted and notifies Bob as usual.
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/limit");
    let mut content = nested(62);
    content["msgtype"] = json!("m.text");
    content["body"] = json!("deep but fine");
    let (status, body) = server.put_as(&alice, &path, content).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.get_as(&bob, "/_matrix/client/v3/notifications").await;
    assert_eq!(status, 200, "{body}");
    let bodies: Vec<&str> = body["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .filter_map(|notification| notification["event"]["content"]["body"].as_str())
        .collect();
    assert!(bodies.contains(&"deep but fine"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn a_display_name_that_would_panic_push_rules_is_refused() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "p").await;
    let bob = server.register("bob", "p").await;
    let room = create_room(&server, &alice, json!({ "preset": "public_chat" })).await;
    let (status, _) =
        server.post_as(&bob, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    assert_eq!(status, 200);

    // ruma turns a display name with wildcards into a regular expression and panics when it
    // outgrows the regex size limit; such a name is longer than any client may set.
    let name = "?a".repeat(20_000);
    let member = format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{}", bob.user_id);
    let (status, body) =
        server.put_as(&bob, &member, json!({ "membership": "join", "displayname": name })).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let profile = format!("/_matrix/client/v3/profile/{}/displayname", bob.user_id);
    let (_, before) = server.get_as(&bob, &profile).await;
    let (status, body) = server.put_as(&bob, &profile, json!({ "displayname": name })).await;
    assert_error(status, &body, 400, "M_TOO_LARGE");
    let (status, after) = server.get_as(&bob, &profile).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(before, after);

    // Push rule patterns are bounded for the same reason.
    let rule = "/_matrix/client/v3/pushrules/global/content/wild";
    let (status, body) = server
        .put_as(&bob, rule, json!({ "pattern": "?a".repeat(2_000), "actions": ["notify"] }))
        .await;
    assert_error(status, &body, 400, "M_TOO_LARGE");
    let (status, _) = server.get_as(&bob, rule).await;
    assert_eq!(status, 404);

    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/hello");
    let (status, body) =
        server.put_as(&alice, &path, json!({ "msgtype": "m.text", "body": "hello bob" })).await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn the_spec_size_limits_are_enforced_before_anything_is_stored() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "p").await;
    let bob = server.register("bob", "p").await;
    let room = create_room(&server, &alice, json!({ "preset": "public_chat" })).await;

    // A 70 kB message: 413, not 500.
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/big");
    let big = json!({ "msgtype": "m.text", "body": "x".repeat(70_000) });
    let (status, body) = server.put_as(&alice, &path, big).await;
    assert_error(status, &body, 413, "M_TOO_LARGE");
    // Event types and state keys: 255 bytes.
    let long = "t".repeat(10_000);
    let path = format!("/_matrix/client/v3/rooms/{room}/send/{long}/type");
    let (status, body) = server.put_as(&alice, &path, json!({})).await;
    assert_error(status, &body, 413, "M_TOO_LARGE");
    let path = format!("/_matrix/client/v3/rooms/{room}/state/org.example/{long}");
    let (status, body) = server.put_as(&alice, &path, json!({})).await;
    assert_error(status, &body, 413, "M_TOO_LARGE");
    let path = format!("/_matrix/client/v3/rooms/{room}/state/org.example/{}", "k".repeat(255));
    let (status, body) = server.put_as(&alice, &path, json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .get_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"))
        .await;
    assert_eq!(status, 200);
    let stored = body["chunk"].as_array().expect("chunk");
    assert!(stored.iter().all(|event| event["type"] != long.as_str()
        && event["content"]["body"].as_str().is_none_or(|body| body.len() < 70_000)));

    // A device name of 1 MiB, a status of 100 kB: refused, the old ones stay.
    let device = format!("/_matrix/client/v3/devices/{}", alice.device_id);
    let (status, _) = server.put_as(&alice, &device, json!({ "display_name": "phone" })).await;
    assert_eq!(status, 200);
    let (status, body) =
        server.put_as(&alice, &device, json!({ "display_name": "d".repeat(1 << 20) })).await;
    assert_error(status, &body, 400, "M_TOO_LARGE");
    let (_, body) = server.get_as(&alice, &device).await;
    assert_eq!(body["display_name"], "phone");
    let presence = format!("/_matrix/client/v3/presence/{}/status", alice.user_id);
    let (status, _) =
        server.put_as(&alice, &presence, json!({ "presence": "online", "status_msg": "hi" })).await;
    assert_eq!(status, 200);
    let (status, body) = server
        .put_as(
            &alice,
            &presence,
            json!({ "presence": "online", "status_msg": "s".repeat(100_000) }),
        )
        .await;
    assert_error(status, &body, 400, "M_TOO_LARGE");
    let (_, body) = server.get_as(&alice, &presence).await;
    assert_eq!(body["status_msg"], "hi", "{body}");

    // Names chosen at login, tags, reports, pushers, to-device messages.
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "bob" },
                "password": "p",
                "device_id": "D".repeat(300),
            })),
        )
        .await;
    assert_error(status, &body, 400, "M_TOO_LARGE");
    let tag =
        format!("/_matrix/client/v3/user/{}/rooms/{room}/tags/{}", alice.user_id, "t".repeat(300));
    let (status, body) = server.put_as(&alice, &tag, json!({})).await;
    assert_error(status, &body, 400, "M_TOO_LARGE");
    let report = format!("/_matrix/client/v3/rooms/{room}/report");
    let (status, body) =
        server.post_as(&alice, &report, json!({ "reason": "r".repeat(3_000) })).await;
    assert_error(status, &body, 400, "M_TOO_LARGE");
    let pusher = json!({
        "kind": "http", "app_id": "org.example", "pushkey": "p".repeat(600),
        "app_display_name": "a", "device_display_name": "d", "lang": "en",
        "data": { "url": "http://127.0.0.1:1/_matrix/push/v1/notify" },
    });
    let (status, body) = server.post_as(&alice, "/_matrix/client/v3/pushers/set", pusher).await;
    assert_error(status, &body, 400, "M_TOO_LARGE");
    let body = json!({ "messages": { bob.user_id.clone(): { bob.device_id.clone(): { "x": "y".repeat(70_000) } } } });
    let (status, body) =
        server.put_as(&alice, "/_matrix/client/v3/sendToDevice/m.room.encrypted/big", body).await;
    assert_error(status, &body, 413, "M_TOO_LARGE");
    let (_, body) = sync(&server, &bob, None).await;
    assert!(body["to_device"]["events"].as_array().is_none_or(Vec::is_empty), "{body}");
    let txn = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{}", "x".repeat(300));
    let (status, body) =
        server.put_as(&alice, &txn, json!({ "msgtype": "m.text", "body": "t" })).await;
    assert_error(status, &body, 400, "M_TOO_LARGE");
    server.stop().await;
}

#[tokio::test]
async fn empty_bodies_are_only_taken_as_empty_objects_where_every_field_is_optional() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "p").await;
    let bob = server.register("bob", "p").await;
    let room = create_room(&server, &alice, json!({ "preset": "public_chat" })).await;
    let token = Some(alice.token.as_str());

    // Bodies that are content: required.
    for (method, path) in [
        (Method::PUT, format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/empty")),
        (Method::PUT, format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic")),
        (
            Method::PUT,
            format!("/_matrix/client/v3/user/{}/account_data/org.example.empty", alice.user_id),
        ),
        (
            Method::PUT,
            format!("/_matrix/client/v3/user/{}/rooms/{room}/tags/u.work", alice.user_id),
        ),
        (Method::POST, "/_matrix/client/v3/login".to_owned()),
    ] {
        let (status, body) = send_raw(&server, method, &path, token, "").await;
        assert_error(status, &body, 400, "M_NOT_JSON");
    }
    let (_, body) = server
        .get_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"))
        .await;
    let chunk = body["chunk"].as_array().expect("chunk");
    assert!(
        chunk
            .iter()
            .all(|event| event["type"] != "m.room.message" && event["type"] != "m.room.topic"),
        "{body}"
    );

    // Bodies whose fields are all optional: clients send them empty, and that works.
    let bob_token = Some(bob.token.as_str());
    let (status, body) =
        send_raw(&server, Method::POST, &format!("/_matrix/client/v3/join/{room}"), bob_token, "")
            .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send_raw(
        &server,
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{room}/leave"),
        bob_token,
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        send_raw(&server, Method::POST, "/_matrix/client/v3/logout", bob_token, "").await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn duplicate_keys_and_unknown_enum_values_are_refused() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "p").await;
    let token = Some(alice.token.as_str());
    let (_, before) = server.get_as(&alice, "/_matrix/client/v3/joined_rooms").await;

    for body in [
        r#"{"name":"one","name":"two"}"#,
        r#"{"visibility":"secret"}"#,
        r#"{"preset":"everyone_is_admin"}"#,
        r#"{"creation_content":{"m.federate":true,"m.federate":false}}"#,
    ] {
        let (status, response) =
            send_raw(&server, Method::POST, "/_matrix/client/v3/createRoom", token, body).await;
        assert_error(status, &response, 400, "M_BAD_JSON");
    }
    let (_, after) = server.get_as(&alice, "/_matrix/client/v3/joined_rooms").await;
    assert_eq!(before, after, "a refused createRoom created a room");

    let login = r#"{"type":"m.login.password","identifier":{"type":"m.id.user","user":"alice"},"password":"p","password":"q"}"#;
    let (status, body) =
        send_raw(&server, Method::POST, "/_matrix/client/v3/login", None, login).await;
    assert_error(status, &body, 400, "M_BAD_JSON");

    let room = create_room(&server, &alice, json!({})).await;
    for path in [
        "/_matrix/client/v3/sync?timeout=0&set_presence=dancing".to_owned(),
        format!("/_matrix/client/v3/rooms/{room}/members?membership=lurking"),
    ] {
        let (status, body) = server.get_as(&alice, &path).await;
        assert_error(status, &body, 400, "M_INVALID_PARAM");
    }
    let (status, body) = server
        .request(Method::POST, "/_matrix/client/v3/register?kind=robot", None, Some(json!({})))
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let filter = format!("/_matrix/client/v3/user/{}/filter", alice.user_id);
    let (status, body) = server.post_as(&alice, &filter, json!({ "event_format": "xml" })).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    server.stop().await;
}

/// JSON values a few levels deep, with every kind of scalar.
fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "[a-z._@:!$#]{0,12}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("type".to_owned()),
                    Just("body".to_owned()),
                    Just("content".to_owned()),
                    Just("messages".to_owned()),
                    Just("device_keys".to_owned()),
                    Just("room".to_owned()),
                    Just("visibility".to_owned()),
                    Just("initial_state".to_owned()),
                    "[a-z_.]{1,10}",
                ],
                inner,
                0..6,
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Arbitrary bytes and arbitrary JSON, through the whole request path (size and JSON
/// checks, ruma's parsers, the handlers, storage) of endpoints that store what they get:
/// never a 5xx, always a Matrix error when refused, and what was stored stays readable.
#[test]
fn arbitrary_request_bodies_never_get_a_5xx() {
    use proptest::{
        prelude::*,
        test_runner::{Config, TestRunner},
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (mut server, user, room) = runtime.block_on(async {
        let server = TestServer::start().await;
        let user = server.register("fuzzer", "p").await;
        let room = create_room(&server, &user, json!({})).await;
        (server, user, room)
    });
    let endpoints = [
        (Method::POST, "/_matrix/client/v3/login".to_owned(), false),
        (Method::POST, "/_matrix/client/v3/createRoom".to_owned(), true),
        (Method::PUT, format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/"), true),
        (Method::PUT, format!("/_matrix/client/v3/rooms/{room}/state/org.example.fuzz/"), true),
        (
            Method::PUT,
            format!("/_matrix/client/v3/user/{}/account_data/org.example.fuzz", user.user_id),
            true,
        ),
        (Method::PUT, "/_matrix/client/v3/sendToDevice/org.example.fuzz/".to_owned(), true),
        (Method::POST, "/_matrix/client/v3/keys/upload".to_owned(), true),
        (Method::POST, format!("/_matrix/client/v3/user/{}/filter", user.user_id), true),
        (Method::PUT, format!("/_matrix/client/v3/profile/{}/displayname", user.user_id), true),
        (Method::PUT, format!("/_matrix/client/v3/devices/{}", user.device_id), true),
    ];
    let body = prop_oneof![
        any::<Vec<u8>>(),
        arbitrary_json().prop_map(|value| serde_json::to_vec(&value).expect("serialize")),
        (arbitrary_json(), 0..80_usize).prop_map(|(value, levels)| {
            let mut value = value;
            for _ in 0..levels {
                value = json!([value]);
            }
            serde_json::to_vec(&value).expect("serialize")
        }),
    ];
    let mut runner =
        TestRunner::new(Config { cases: 400, failure_persistence: None, ..Config::default() });
    let sent = std::sync::atomic::AtomicU64::new(0);
    let result = runner.run(&(0..endpoints.len(), body), |(endpoint, body)| {
        let (method, path, authenticated) = &endpoints[endpoint];
        let n = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Paths ending in `/` take a fresh transaction id.
        let path = if path.ends_with('/') { format!("{path}t{n}") } else { path.clone() };
        let token = authenticated.then_some(user.token.as_str());
        let (status, answer) =
            runtime.block_on(send_raw(&server, method.clone(), &path, token, body.clone()));
        prop_assert!(status < 500, "{method} {path}: {status} {answer}");
        if status >= 400 {
            prop_assert!(answer["errcode"].is_string(), "{method} {path}: {status} {answer}");
        }
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    runtime.block_on(async {
        let (status, body) = sync(&server, &user, None).await;
        assert_eq!(status, 200, "{body}");
        let path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100");
        let (status, body) = server.get_as(&user, &path).await;
        assert_eq!(status, 200, "{body}");
        server.stop().await;
    });
}

/// Pagination tokens and counts at the edges of their types (the largest integers, zero,
/// negative and absurd numbers) on every endpoint that takes them: a Matrix error or an
/// answer, never a 5xx (an overflow in the server's arithmetic would be a panic).
#[tokio::test]
async fn extreme_tokens_and_limits_never_get_a_5xx() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "p").await;
    let room = create_room(&server, &alice, json!({"name": "r", "preset": "public_chat"})).await;
    let (_, sent) = server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1"),
            json!({"msgtype": "m.text", "body": "hello"}),
        )
        .await;
    let event = sent["event_id"].as_str().expect("event_id").to_owned();
    let max = u64::MAX.to_string();
    let big = "9".repeat(40);
    let mut paths = Vec::new();
    for number in ["0", "1", max.as_str(), big.as_str(), "-1"] {
        for token in [
            format!("t{number}"),
            format!("s{number}"),
            format!("s{number}_{number}"),
            format!("s{number}_{number}_{number}"),
            number.to_owned(),
        ] {
            paths.push(format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&from={token}"));
            paths.push(format!(
                "/_matrix/client/v3/rooms/{room}/messages?dir=b&from={token}&to={token}"
            ));
            paths.push(format!("/_matrix/client/v3/sync?timeout=0&since={token}"));
            paths.push(format!("/_matrix/client/v3/keys/changes?from={token}&to={token}"));
            paths.push(format!("/_matrix/client/v3/notifications?from={number}"));
            paths.push(format!("/_matrix/client/v3/publicRooms?since=n{number}"));
            paths.push(format!("/_matrix/client/v3/publicRooms?since=p{number}"));
            paths.push(format!(
                "/_matrix/client/v1/rooms/{room}/hierarchy?from=h{number}_{number}_a"
            ));
            paths.push(format!("/_matrix/client/v1/rooms/{room}/relations/{event}?from={token}"));
            paths.push(format!("/_matrix/client/v1/rooms/{room}/threads?from={token}"));
        }
        paths.push(format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit={number}"));
        paths.push(format!("/_matrix/client/v3/rooms/{room}/context/{event}?limit={number}"));
        paths.push(format!("/_matrix/client/v3/notifications?limit={number}"));
        paths.push(format!("/_matrix/client/v3/publicRooms?limit={number}"));
        paths.push(format!(
            "/_matrix/client/v1/rooms/{room}/hierarchy?limit={number}&max_depth={number}"
        ));
        paths.push(format!("/_matrix/client/v1/rooms/{room}/relations/{event}?limit={number}"));
        paths.push(format!("/_matrix/client/v1/rooms/{room}/threads?limit={number}"));
        paths.push(format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?dir=f&ts={number}"));
        paths.push(format!("/_matrix/client/v3/sync?timeout={number}&since=s1_0"));
    }
    for path in &paths {
        let (status, body) = server.get_as(&alice, path).await;
        assert!(status < 500, "{path}: {status} {body}");
        if status >= 400 {
            assert!(body["errcode"].is_string(), "{path}: {status} {body}");
        }
    }
    for next_batch in [format!("k_{max}_{max}"), format!("r_{big}_0"), "r_1_1_room_zz".to_owned()] {
        let (status, body) = server
            .post_as(
                &alice,
                &format!("/_matrix/client/v3/search?next_batch={next_batch}"),
                json!({"search_categories": {"room_events": {"search_term": "hello"}}}),
            )
            .await;
        assert!(status < 500, "search {next_batch}: {status} {body}");
    }
}

/// An event whose stored record or metadata cannot be read (a bug, a damaged disk) is left
/// out of every list that would include it, instead of failing the list: `/messages`, the
/// room's state and members, `/context`, `/search`, relations and threads.
#[tokio::test]
async fn an_unreadable_event_is_left_out_of_lists_instead_of_failing_them() {
    use tuwunel::storage::{
        codec::Key,
        rooms::{EVENT_META_TABLE, PDUS_TABLE},
    };

    let server = TestServer::start().await;
    let alice = server.register("alice", "p").await;
    let room = create_room(&server, &alice, json!({"name": "r"})).await;
    let mut events = Vec::new();
    for (n, body) in ["first hello", "second hello", "third hello"].iter().enumerate() {
        let (status, sent) = server
            .put_as(
                &alice,
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/u{n}"),
                json!({"msgtype": "m.text", "body": body}),
            )
            .await;
        assert_eq!(status, 200, "{sent}");
        events.push(sent["event_id"].as_str().expect("event_id").to_owned());
    }
    let (status, topic) = server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic"),
            json!({"topic": "t"}),
        )
        .await;
    assert_eq!(status, 200, "{topic}");
    let storage = std::sync::Arc::clone(&server.server().services().storage);
    let short = |event: &str| {
        let event = ruma::OwnedEventId::try_from(event).expect("event id");
        tuwunel::rooms::event_short(&storage, &event).expect("lookup").expect("short id")
    };
    let (broken_pdu, broken_meta, broken_state) =
        (short(&events[0]), short(&events[1]), short(topic["event_id"].as_str().expect("id")));
    let mut batch = Batch::new();
    PDUS_TABLE.put(&mut batch, &broken_pdu, &b"{\"broken".to_vec());
    batch.put_raw(EVENT_META_TABLE.id(), broken_meta.encode(), b"not json".to_vec());
    PDUS_TABLE.put(&mut batch, &broken_state, &b"[".to_vec());
    storage.writer().commit(batch).await.expect("commit");

    let third = &events[2];
    for path in [
        format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"),
        format!("/_matrix/client/v3/rooms/{room}/state"),
        format!("/_matrix/client/v3/rooms/{room}/members"),
        format!("/_matrix/client/v3/rooms/{room}/context/{third}?limit=10"),
        format!("/_matrix/client/v1/rooms/{room}/relations/{third}"),
        format!("/_matrix/client/v1/rooms/{room}/threads"),
    ] {
        let (status, body) = server.get_as(&alice, &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let text = body.to_string();
        assert!(!text.contains(&events[0]) && !text.contains(&events[1]), "{path}: {body}");
    }
    let (_, page) = server
        .get_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"))
        .await;
    assert!(page.to_string().contains(third.as_str()), "the readable events are there: {page}");
    let (status, found) = server
        .post_as(
            &alice,
            "/_matrix/client/v3/search",
            json!({"search_categories": {"room_events": {"search_term": "hello"}}}),
        )
        .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(
        found["search_categories"]["room_events"]["results"].as_array().map(Vec::len),
        Some(1)
    );
}
