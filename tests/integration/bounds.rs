//! How much one account may keep (issue 19): push rules, account data, tags, filters,
//! devices, one-time and fallback keys, pushers, room aliases, key backups, reports and
//! to-device fan-out are bounded, refused past the bound with the spec's error and without
//! writing anything, while what stays within the bound keeps working. Where reaching a bound
//! through the API would take thousands of requests, the test stores the rows directly first
//! (as a long-lived account would have them) and checks the next request.

use std::sync::Arc;

use serde_json::{Value, json};
use tuwunel::{
    Services,
    accounts::UserMessage,
    limits,
    storage::{
        Batch,
        account_data::{ACCOUNT_DATA_TABLE, AccountDataRecord},
        codec::Json,
        keys::{BACKUP_VERSIONS_TABLE, BackupVersionRecord},
        users::{DEVICES_TABLE, DeviceRecord, FILTERS_TABLE},
    },
};

use crate::common::{TestServer, User, assert_error};

fn services(server: &TestServer) -> Arc<Services> {
    Arc::clone(server.server().services())
}

fn user_id(user: &User) -> ruma::OwnedUserId {
    ruma::OwnedUserId::try_from(user.user_id.as_str()).expect("user id")
}

/// Asserts `400 M_USER_LIMIT_EXCEEDED` with the spec's required `info_uri`.
fn assert_user_limit(status: u16, body: &Value) {
    assert_error(status, body, 400, "M_USER_LIMIT_EXCEEDED");
    let uri = body["info_uri"].as_str().unwrap_or_default();
    assert!(uri.starts_with("https://"), "info_uri missing: {body}");
}

/// Commits `fill` as one batch, behind the API's back.
async fn store(server: &TestServer, fill: impl FnOnce(&mut Batch)) {
    let mut batch = Batch::new();
    fill(&mut batch);
    services(server).storage.writer().commit(batch).await.expect("commit");
}

#[tokio::test]
async fn push_rules_are_bounded_in_number_and_in_wildcard_patterns() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let rule = |id: &str| format!("/_matrix/client/v3/pushrules/global/content/{id}");

    // Wildcard patterns share a budget: two of 1000 characters fill it.
    let long = "a?".repeat(500);
    for id in ["long1", "long2"] {
        let (status, body) =
            server.put_as(&alice, &rule(id), json!({"pattern": long, "actions": ["notify"]})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) =
        server.put_as(&alice, &rule("one_more"), json!({"pattern": "x*", "actions": []})).await;
    assert_user_limit(status, &body);
    let (status, _) = server.get_as(&alice, &rule("one_more")).await;
    assert_eq!(status, 404, "a refused rule is not stored");
    // A keyword without wildcards costs nothing there.
    let (status, body) =
        server.put_as(&alice, &rule("plain"), json!({"pattern": "lunch", "actions": []})).await;
    assert_eq!(status, 200, "{body}");

    // As many rules of one's own as the bound allows (muted rooms, say)...
    let services = services(&server);
    let update: tuwunel::accounts::PushRulesUpdate = Box::new(|rules| {
        for n in 0..limits::MAX_PUSH_RULES - 3 {
            let sender = format!("@muted{n}:example.org").try_into().expect("user id");
            let rule = ruma::push::NewSimplePushRule::new(sender, vec![]);
            rules.insert(ruma::push::NewPushRule::Sender(rule), None, None).expect("insert");
        }
        Ok(())
    });
    services
        .accounts
        .call(&user_id(&alice), |reply| UserMessage::UpdatePushRules {
            update,
            written: None,
            reply,
        })
        .await
        .expect("filled");
    // ...and not one more, through the API.
    let sender_rule = "/_matrix/client/v3/pushrules/global/sender/%40bob%3Aexample.org";
    let (status, body) = server.put_as(&alice, sender_rule, json!({"actions": []})).await;
    assert_user_limit(status, &body);
    // Removing one makes room again.
    let (status, _) = server.delete_as(&alice, &rule("plain"), json!({})).await;
    assert_eq!(status, 200);
    let (status, body) = server.put_as(&alice, sender_rule, json!({"actions": []})).await;
    assert_eq!(status, 200, "{body}");

    // One rule with more conditions than any sensible rule has.
    let conditions: Vec<Value> = (0..=limits::MAX_PUSH_RULE_CONDITIONS)
        .map(|n| json!({"kind": "event_match", "key": "type", "pattern": format!("m.t{n}")}))
        .collect();
    let bob = server.register("bob", "pw").await;
    let (status, body) = server
        .put_as(
            &bob,
            "/_matrix/client/v3/pushrules/global/override/many",
            json!({"conditions": conditions, "actions": []}),
        )
        .await;
    assert_error(status, &body, 400, "M_TOO_LARGE");
}

#[tokio::test]
async fn account_data_is_bounded_per_value_per_scope_and_in_all() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let global =
        |kind: &str| format!("/_matrix/client/v3/user/{}/account_data/{kind}", alice.user_id);

    // One value over 1 MiB.
    let huge = "x".repeat(limits::MAX_ACCOUNT_DATA_BYTES);
    let (status, body) =
        server.put_as(&alice, &global("org.example.huge"), json!({"v": huge})).await;
    assert_error(status, &body, 413, "M_TOO_LARGE");
    let (status, _) = server.get_as(&alice, &global("org.example.huge")).await;
    assert_eq!(status, 404, "nothing was stored");

    // Values just under 1 MiB, until the total would pass 16 MiB.
    let big = json!({"v": "y".repeat(limits::MAX_ACCOUNT_DATA_BYTES - 100)});
    let fitting =
        (limits::MAX_ACCOUNT_DATA_TOTAL_BYTES / limits::MAX_ACCOUNT_DATA_BYTES as u64) as usize;
    for n in 0..fitting {
        let (status, body) =
            server.put_as(&alice, &global(&format!("org.example.big{n}")), big.clone()).await;
        assert_eq!(status, 200, "value {n}: {body}");
    }
    let (status, body) = server.put_as(&alice, &global("org.example.over"), big.clone()).await;
    assert_user_limit(status, &body);
    // Shrinking is always allowed, and makes room.
    let (status, _) = server.put_as(&alice, &global("org.example.big0"), json!({})).await;
    assert_eq!(status, 200);
    let (status, body) = server.put_as(&alice, &global("org.example.over"), big).await;
    assert_eq!(status, 200, "{body}");

    // Types per room.
    let bob = server.register("bob", "pw").await;
    let bob_room = |kind: &str| {
        format!("/_matrix/client/v3/user/{}/rooms/!r:test.local/account_data/{kind}", bob.user_id)
    };
    for n in 0..limits::MAX_ROOM_ACCOUNT_DATA_KEYS {
        let (status, body) =
            server.put_as(&bob, &bob_room(&format!("org.example.t{n}")), json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = server.put_as(&bob, &bob_room("org.example.more"), json!({})).await;
    assert_user_limit(status, &body);
    let (status, body) =
        server.put_as(&bob, &bob_room("org.example.t0"), json!({"again": 1})).await;
    assert_eq!(status, 200, "an existing type can still change: {body}");

    // Global types: a long-lived account's, then one more.
    let carol = server.register("carol", "pw").await;
    let carol_id = carol.id();
    store(&server, |batch| {
        for n in 0..limits::MAX_GLOBAL_ACCOUNT_DATA_KEYS {
            let key = (carol_id.clone(), String::new(), format!("org.example.k{n}"));
            let record = AccountDataRecord { position: 1, content: json!({}) };
            ACCOUNT_DATA_TABLE.put(batch, &key, &Json(record));
        }
    })
    .await;
    let carol_global =
        |kind: &str| format!("/_matrix/client/v3/user/{carol_id}/account_data/{kind}");
    let (status, body) = server.put_as(&carol, &carol_global("org.example.new"), json!({})).await;
    assert_user_limit(status, &body);
    let (status, body) =
        server.put_as(&carol, &carol_global("org.example.k5"), json!({"a": 1})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn tags_added_at_once_are_all_kept_and_bounded_per_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let tags = format!("/_matrix/client/v3/user/{}/rooms/!r:test.local/tags", alice.user_id);

    // Each request read the tags and wrote them back with its own: concurrent ones lost
    // each other's.
    let mut adding = tokio::task::JoinSet::new();
    for n in 0..20 {
        let (client, url, token) =
            (server.client.clone(), server.url(&format!("{tags}/u.tag{n}")), alice.token.clone());
        adding.spawn(async move {
            client.put(url).bearer_auth(token).json(&json!({})).send().await.expect("put").status()
        });
    }
    while let Some(status) = adding.join_next().await {
        assert_eq!(status.expect("task"), 200);
    }
    let (status, body) = server.get_as(&alice, &tags).await;
    assert_eq!(status, 200);
    assert_eq!(body["tags"].as_object().map(serde_json::Map::len), Some(20), "{body}");

    for n in 20..limits::MAX_TAGS_PER_ROOM {
        let (status, body) = server.put_as(&alice, &format!("{tags}/u.tag{n}"), json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = server.put_as(&alice, &format!("{tags}/u.extra"), json!({})).await;
    assert_user_limit(status, &body);
    let (status, body) =
        server.put_as(&alice, &format!("{tags}/u.tag0"), json!({"order": 0.5})).await;
    assert_eq!(status, 200, "an existing tag can still change: {body}");
    let (status, _) = server.delete_as(&alice, &format!("{tags}/u.tag1"), json!({})).await;
    assert_eq!(status, 200);
    let (status, body) = server.put_as(&alice, &format!("{tags}/u.extra"), json!({})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn filters_are_bounded_in_size_and_number() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let path = format!("/_matrix/client/v3/user/{}/filter", alice.user_id);
    let senders: Vec<String> =
        (0..limits::MAX_FILTER_BYTES / 20).map(|n| format!("@sender{n}:example.org")).collect();
    let (status, body) =
        server.post_as(&alice, &path, json!({"room": {"timeline": {"senders": senders}}})).await;
    assert_error(status, &body, 413, "M_TOO_LARGE");

    let (status, body) =
        server.post_as(&alice, &path, json!({"room": {"timeline": {"limit": 5}}})).await;
    assert_eq!(status, 200, "{body}");
    let kept = body["filter_id"].as_str().expect("filter_id").to_owned();
    let user = alice.id();
    store(&server, |batch| {
        for n in 1..limits::MAX_FILTERS {
            FILTERS_TABLE.put(batch, &(user.clone(), format!("old{n}")), &b"{}".to_vec());
        }
    })
    .await;
    let (status, body) =
        server.post_as(&alice, &path, json!({"room": {"timeline": {"limit": 6}}})).await;
    assert_user_limit(status, &body);
    // The same filter again is the one already stored.
    let (status, body) =
        server.post_as(&alice, &path, json!({"room": {"timeline": {"limit": 5}}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["filter_id"], kept.as_str());
}

#[tokio::test]
async fn devices_are_bounded() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let user = alice.id();
    store(&server, |batch| {
        for n in 1..limits::MAX_DEVICES {
            let record = DeviceRecord { created_ms: 1, ..DeviceRecord::default() };
            DEVICES_TABLE.put(batch, &(user.clone(), format!("OLD{n}").into()), &Json(record));
        }
    })
    .await;
    let login = |device: Option<&str>| {
        let mut body = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "alice"},
            "password": "pw",
        });
        if let Some(device) = device {
            body["device_id"] = json!(device);
        }
        body
    };
    let (status, body) = server
        .request(reqwest::Method::POST, "/_matrix/client/v3/login", None, Some(login(None)))
        .await;
    assert_user_limit(status, &body);
    // Logging in again on a device one has is not a new device.
    let (status, body) = server
        .request(reqwest::Method::POST, "/_matrix/client/v3/login", None, Some(login(Some("OLD7"))))
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn one_time_and_fallback_keys_are_bounded() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let key = |n: usize| (format!("signed_curve25519:K{n:05}"), json!({"key": format!("k{n}")}));
    let keys = |range: std::ops::Range<usize>| -> serde_json::Map<String, Value> {
        range.map(key).collect()
    };
    let upload = "/_matrix/client/v3/keys/upload";
    let (status, body) = server
        .post_as(&alice, upload, json!({"one_time_keys": keys(0..limits::MAX_ONE_TIME_KEYS)}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        server.post_as(&alice, upload, json!({"one_time_keys": keys(1000..1001)})).await;
    assert_user_limit(status, &body);
    // Uploading keys the device already has is fine, and counts what is there.
    let (status, body) = server.post_as(&alice, upload, json!({"one_time_keys": keys(0..3)})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], limits::MAX_ONE_TIME_KEYS);

    let big = json!({"key": "k".repeat(limits::MAX_ONE_TIME_KEY_BYTES)});
    let bob = server.register("bob", "pw").await;
    let (status, body) = server
        .post_as(&bob, upload, json!({"one_time_keys": {"signed_curve25519:BIG": big}}))
        .await;
    assert_error(status, &body, 400, "M_TOO_LARGE");

    let fallback: serde_json::Map<String, Value> = (0..=limits::MAX_FALLBACK_KEYS)
        .map(|n| (format!("alg{n}:F1"), json!({"key": "f"})))
        .collect();
    let (status, body) = server.post_as(&bob, upload, json!({"fallback_keys": fallback})).await;
    assert_user_limit(status, &body);
}

#[tokio::test]
async fn pushers_are_bounded_in_number_and_size() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let pusher = |pushkey: String, data: Value| {
        json!({
            "kind": "http", "app_id": "org.example.app", "pushkey": pushkey,
            "app_display_name": "App", "device_display_name": "Phone", "lang": "en",
            "data": data,
        })
    };
    let url = json!({"url": "http://127.0.0.1:9/_matrix/push/v1/notify"});
    let set = "/_matrix/client/v3/pushers/set";
    let mut oversized = url.clone();
    oversized["padding"] = json!("p".repeat(limits::MAX_PUSHER_BYTES));
    let (status, body) = server.post_as(&alice, set, pusher("big".to_owned(), oversized)).await;
    assert_error(status, &body, 400, "M_TOO_LARGE");
    for n in 0..limits::MAX_PUSHERS {
        let (status, body) =
            server.post_as(&alice, set, pusher(format!("key{n}"), url.clone())).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) =
        server.post_as(&alice, set, pusher("one-more".to_owned(), url.clone())).await;
    assert_user_limit(status, &body);
    let (status, body) = server.get_as(&alice, "/_matrix/client/v3/pushers").await;
    assert_eq!(status, 200);
    assert_eq!(body["pushers"].as_array().map(Vec::len), Some(limits::MAX_PUSHERS));
    // Replacing an existing pusher is not a new one.
    let (status, body) = server.post_as(&alice, set, pusher("key3".to_owned(), url)).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_room_has_a_bounded_number_of_aliases() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let (status, body) = server.post_as(&alice, "/_matrix/client/v3/createRoom", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let room_id = body["room_id"].as_str().expect("room_id").to_owned();
    let alias = |n: usize| format!("/_matrix/client/v3/directory/room/%23alias{n}%3Atest.local");
    for n in 0..limits::MAX_ROOM_ALIASES {
        let (status, body) = server.put_as(&alice, &alias(n), json!({"room_id": room_id})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) =
        server.put_as(&alice, &alias(limits::MAX_ROOM_ALIASES), json!({"room_id": room_id})).await;
    assert_error(status, &body, 400, "M_TOO_LARGE");
    let (status, _) = server.get(&alias(limits::MAX_ROOM_ALIASES)).await;
    assert_eq!(status, 404, "the refused alias does not exist");
}

#[tokio::test]
async fn key_backups_are_bounded_in_versions_and_sessions() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let version = json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "k"}});
    let mut created = Vec::new();
    for _ in 0..limits::MAX_BACKUP_VERSIONS {
        let (status, body) =
            server.post_as(&alice, "/_matrix/client/v3/room_keys/version", version.clone()).await;
        assert_eq!(status, 200, "{body}");
        created.push(body["version"].as_str().expect("version").to_owned());
    }
    let (status, body) =
        server.post_as(&alice, "/_matrix/client/v3/room_keys/version", version.clone()).await;
    assert_user_limit(status, &body);
    let (status, _) = server
        .delete_as(
            &alice,
            &format!("/_matrix/client/v3/room_keys/version/{}", created[0]),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) =
        server.post_as(&alice, "/_matrix/client/v3/room_keys/version", version.clone()).await;
    assert_eq!(status, 200, "{body}");
    let current = body["version"].as_str().expect("version").to_owned();
    assert!(
        current.parse::<u64>().expect("number") > limits::MAX_BACKUP_VERSIONS as u64,
        "ids are never reused"
    );

    let session = |data: Value| json!({"first_message_index": 0, "forwarded_count": 0, "is_verified": true, "session_data": data});
    let keys = format!("/_matrix/client/v3/room_keys/keys/!r:test.local/s1?version={current}");
    let (status, body) = server
        .put_as(
            &alice,
            &keys,
            session(json!({"ciphertext": "c".repeat(limits::MAX_BACKUP_SESSION_BYTES)})),
        )
        .await;
    assert_error(status, &body, 400, "M_TOO_LARGE");
    // A version as full as the bound allows (its count as stored).
    let number: u64 = current.parse().expect("number");
    let user = alice.id();
    store(&server, |batch| {
        let record = BackupVersionRecord {
            algorithm: version["algorithm"].clone(),
            auth_data: version["auth_data"].clone(),
            count: limits::MAX_BACKUP_SESSIONS,
            etag: 1,
            deleted: false,
        };
        BACKUP_VERSIONS_TABLE.put(batch, &(user, number), &Json(record));
    })
    .await;
    let (status, body) = server.put_as(&alice, &keys, session(json!({"ciphertext": "c"}))).await;
    assert_user_limit(status, &body);
}

#[tokio::test]
async fn reports_are_rate_limited_per_user() {
    let server = TestServer::start().await;
    // The first account is the server's admin, whom no limit applies to.
    server.register("admin", "pw").await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let path = format!("/_matrix/client/v3/users/{}/report", bob.user_id);
    for _ in 0..10 {
        let (status, body) = server.post_as(&alice, &path, json!({"reason": "spam"})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = server.post_as(&alice, &path, json!({"reason": "spam"})).await;
    assert_error(status, &body, 429, "M_LIMIT_EXCEEDED");
    let (status, body) = server
        .post_as(
            &bob,
            &format!("/_matrix/client/v3/users/{}/report", alice.user_id),
            json!({"reason": "x"}),
        )
        .await;
    assert_eq!(status, 200, "another user is not affected: {body}");
}

#[tokio::test]
async fn a_to_device_fan_out_past_the_bound_delivers_to_nobody() {
    let server = TestServer::start().await;
    let sender = server.register("sender", "pw").await;
    let amy = server.register("amy", "pw").await;
    let zed = server.register("zed", "pw").await;
    // Enough devices that `*` turns one 60 kB message into more than a request may carry.
    let message_bytes = 60_000;
    let devices = 24 * 1024 * 1024 / message_bytes + 10;
    let zed_id = zed.id();
    store(&server, |batch| {
        for n in 0..devices {
            let record = DeviceRecord { created_ms: 1, ..DeviceRecord::default() };
            DEVICES_TABLE.put(batch, &(zed_id.clone(), format!("Z{n}").into()), &Json(record));
        }
    })
    .await;
    let (status, body) = server.get_as(&amy, "/_matrix/client/v3/sync?timeout=0").await;
    assert_eq!(status, 200);
    let since = body["next_batch"].as_str().expect("next_batch").to_owned();

    // amy sorts first: her message is prepared before zed's fan-out is refused.
    let messages = json!({
        amy.user_id.clone(): {amy.device_id.clone(): {"small": true}},
        zed.user_id.clone(): {"*": {"blob": "b".repeat(message_bytes)}},
    });
    let (status, body) = server
        .put_as(
            &sender,
            "/_matrix/client/v3/sendToDevice/m.test/fanout",
            json!({"messages": messages}),
        )
        .await;
    assert_error(status, &body, 413, "M_TOO_LARGE");
    let (status, body) =
        server.get_as(&amy, &format!("/_matrix/client/v3/sync?timeout=0&since={since}")).await;
    assert_eq!(status, 200);
    let events = body["to_device"]["events"].as_array().map_or(0, Vec::len);
    assert_eq!(events, 0, "a refused request delivers to nobody: {body}");
}
