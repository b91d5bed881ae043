//! End-to-end encryption support: key upload, query and claim, cross-signing and signatures,
//! device list tracking in /sync and /keys/changes, and room key backups.

use std::collections::HashSet;

use ruma::{
    CanonicalJsonValue,
    serde::Base64,
    signatures::{Ed25519KeyPair, sign_json},
};
use serde_json::{Value, json};

use crate::{
    common::{TestServer, User, assert_error},
    rooms::create_room,
    sync::sync,
};

/// An ed25519 key pair standing in for a device's or a cross-signing key.
pub struct Signer {
    pair: Ed25519KeyPair,
    pub public: String,
}

impl Signer {
    /// `name` becomes the key id's part after `ed25519:` unless the public key is the id.
    pub(crate) fn new(name: &str) -> Self {
        let document = Ed25519KeyPair::generate();
        let pair = Ed25519KeyPair::from_der(&document, name.to_owned()).expect("key pair");
        let public =
            Base64::<ruma::serde::base64::Standard, _>::new(pair.public_key().to_vec()).encode();
        Self { pair, public }
    }

    /// A cross-signing key, whose key id is its public key.
    pub(crate) fn cross_signing() -> Self {
        let document = Ed25519KeyPair::generate();
        let probe = Ed25519KeyPair::from_der(&document, "probe".to_owned()).expect("key pair");
        let public =
            Base64::<ruma::serde::base64::Standard, _>::new(probe.public_key().to_vec()).encode();
        let pair = Ed25519KeyPair::from_der(&document, public.clone()).expect("key pair");
        Self { pair, public }
    }

    pub(crate) fn sign(&self, entity: &str, value: &mut Value) {
        let CanonicalJsonValue::Object(mut object) =
            CanonicalJsonValue::try_from(value.clone()).expect("canonical")
        else {
            panic!("not an object")
        };
        sign_json(entity, &self.pair, &mut object).expect("signing");
        *value = serde_json::to_value(object).expect("json");
    }

    fn key_id(&self) -> String {
        format!("ed25519:{}", self.pair.version())
    }
}

pub(crate) fn device_keys(user: &User, device_signer: &Signer) -> Value {
    let mut keys = json!({
        "user_id": user.user_id,
        "device_id": user.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{}", user.device_id): "curve-public-key",
            format!("ed25519:{}", user.device_id): device_signer.public,
        },
    });
    device_signer.sign(&user.user_id, &mut keys);
    keys
}

pub async fn upload_device(server: &TestServer, user: &User) -> Signer {
    let signer = Signer::new(&user.device_id);
    let (status, body) = server
        .post_as(
            user,
            "/_matrix/client/v3/keys/upload",
            json!({"device_keys": device_keys(user, &signer)}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    signer
}

pub(crate) fn cross_signing_key(user: &User, usage: &str, key: &Signer) -> Value {
    json!({"user_id": user.user_id, "usage": [usage], "keys": {format!("ed25519:{}", key.public): key.public}})
}

#[tokio::test]
async fn keys_upload_query_and_claim() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let signer = Signer::new(&alice.device_id);
    let keys = device_keys(&alice, &signer);

    // Bad uploads are refused whole.
    let mut wrong_user = keys.clone();
    wrong_user["user_id"] = json!(bob.user_id);
    let (status, body) = server
        .post_as(&alice, "/_matrix/client/v3/keys/upload", json!({"device_keys": wrong_user}))
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let mut forged = keys.clone();
    forged["keys"][format!("curve25519:{}", alice.device_id)] = json!("swapped");
    let (status, body) = server
        .post_as(&alice, "/_matrix/client/v3/keys/upload", json!({"device_keys": forged}))
        .await;
    assert_error(status, &body, 400, "M_INVALID_SIGNATURE");
    let (status, body) = server
        .post_as(&alice, "/_matrix/client/v3/keys/upload", json!({"device_keys": "nope"}))
        .await;
    assert_error(status, &body, 400, "M_BAD_JSON");

    let one_time: serde_json::Map<String, Value> = (0..3)
        .map(|index| {
            (format!("signed_curve25519:AAA{index}"), json!({"key": format!("otk{index}")}))
        })
        .collect();
    let (status, body) = server
        .post_as(
            &alice,
            "/_matrix/client/v3/keys/upload",
            json!({
                "device_keys": keys,
                "one_time_keys": one_time,
                "fallback_keys": {"signed_curve25519:FB1": {"key": "fallback", "fallback": true}},
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 3);
    // Same key again is fine; the same id with other content is not.
    let (status, body) = server
        .post_as(
            &alice,
            "/_matrix/client/v3/keys/upload",
            json!({"one_time_keys": {"signed_curve25519:AAA0": {"key": "otk0"}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .post_as(
            &alice,
            "/_matrix/client/v3/keys/upload",
            json!({"one_time_keys": {"signed_curve25519:AAA0": {"key": "other"}}}),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");

    let alice_sync = sync(&server, &alice, None, "").await;
    assert_eq!(alice_sync["device_one_time_keys_count"]["signed_curve25519"], 3, "{alice_sync}");
    assert_eq!(alice_sync["device_unused_fallback_key_types"], json!(["signed_curve25519"]));

    // Bob sees the device keys with the device's name; remote users are failures.
    let (status, body) = server
        .post_as(
            &bob,
            "/_matrix/client/v3/keys/query",
            json!({"device_keys": {alice.user_id.clone(): [], "@x:elsewhere.test": []}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let device = &body["device_keys"][&alice.user_id][&alice.device_id];
    assert_eq!(device["keys"][format!("ed25519:{}", alice.device_id)], signer.public);
    assert!(
        device["signatures"][&alice.user_id][format!("ed25519:{}", alice.device_id)].is_string()
    );
    assert!(body["failures"]["elsewhere.test"].is_object(), "{body}");

    // Claims hand out one-time keys oldest first, then the fallback key.
    let claim = json!({"one_time_keys": {alice.user_id.clone(): {alice.device_id.clone(): "signed_curve25519"}}});
    let mut handed_out = Vec::new();
    for _ in 0..5 {
        let (status, body) =
            server.post_as(&bob, "/_matrix/client/v3/keys/claim", claim.clone()).await;
        assert_eq!(status, 200, "{body}");
        let keys = body["one_time_keys"][&alice.user_id][&alice.device_id]
            .as_object()
            .expect("a key")
            .clone();
        assert_eq!(keys.len(), 1);
        handed_out.push(keys.keys().next().cloned().expect("id"));
    }
    assert_eq!(handed_out[3], "signed_curve25519:FB1");
    assert_eq!(handed_out[4], "signed_curve25519:FB1", "the fallback key stays until replaced");
    let mut one_time_ids = handed_out[..3].to_vec();
    one_time_ids.sort();
    assert_eq!(
        one_time_ids,
        ["signed_curve25519:AAA0", "signed_curve25519:AAA1", "signed_curve25519:AAA2"]
    );
    let alice_sync = sync(&server, &alice, None, "").await;
    assert!(
        alice_sync["device_one_time_keys_count"]
            .get("signed_curve25519")
            .is_none_or(|count| count == 0)
    );
    assert_eq!(
        alice_sync["device_unused_fallback_key_types"],
        json!([]),
        "the fallback key was used"
    );

    // A fresh fallback key is unused again.
    let (status, _) = server
        .post_as(&alice, "/_matrix/client/v3/keys/upload", json!({"fallback_keys": {"signed_curve25519:FB2": {"key": "fallback2", "fallback": true}}}))
        .await;
    assert_eq!(status, 200);
    let alice_sync = sync(&server, &alice, None, "").await;
    assert_eq!(alice_sync["device_unused_fallback_key_types"], json!(["signed_curve25519"]));
    server.stop().await;
}

/// A deleted device's key supply is gone, also for a later login that reuses its device id
/// (each /sync reads the supply through a cache that must not outlive the device).
#[tokio::test]
async fn a_reused_device_id_starts_without_the_old_keys() {
    let mut server = TestServer::start().await;
    server.register("alice", "pw").await;
    let login = |device: &str| {
        json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "alice"},
            "password": "pw",
            "device_id": device,
        })
    };
    let (status, body) = server
        .request(reqwest::Method::POST, "/_matrix/client/v3/login", None, Some(login("REUSED")))
        .await;
    assert_eq!(status, 200, "{body}");
    let phone = crate::common::user_from(&body);
    let (status, body) = server
        .post_as(
            &phone,
            "/_matrix/client/v3/keys/upload",
            json!({
                "one_time_keys": {"signed_curve25519:K1": {"key": "k1"}},
                "fallback_keys": {"signed_curve25519:F1": {"key": "f1", "fallback": true}},
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let before = sync(&server, &phone, None, "").await;
    assert_eq!(before["device_one_time_keys_count"]["signed_curve25519"], 1, "{before}");
    assert_eq!(before["device_unused_fallback_key_types"], json!(["signed_curve25519"]));

    let (status, body) = server
        .delete_as(&phone, "/_matrix/client/v3/devices/REUSED", json!({
            "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw"}
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .request(reqwest::Method::POST, "/_matrix/client/v3/login", None, Some(login("REUSED")))
        .await;
    assert_eq!(status, 200, "{body}");
    let again = crate::common::user_from(&body);
    let after = sync(&server, &again, None, "").await;
    assert!(
        after["device_one_time_keys_count"].get("signed_curve25519").is_none_or(|count| count == 0),
        "{after}"
    );
    assert_eq!(after["device_unused_fallback_key_types"], json!([]), "{after}");
    server.stop().await;
}

#[tokio::test]
async fn concurrent_claims_never_share_a_key() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let one_time: serde_json::Map<String, Value> = (0..20)
        .map(|index| {
            (format!("signed_curve25519:K{index:02}"), json!({"key": format!("k{index}")}))
        })
        .collect();
    let (status, body) = server
        .post_as(&alice, "/_matrix/client/v3/keys/upload", json!({"one_time_keys": one_time}))
        .await;
    assert_eq!(status, 200, "{body}");
    let claim = json!({"one_time_keys": {alice.user_id.clone(): {alice.device_id.clone(): "signed_curve25519"}}});
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let client = server.client.clone();
        let url = server.url("/_matrix/client/v3/keys/claim");
        let token = bob.token.clone();
        let claim = claim.clone();
        tasks.push(tokio::spawn(async move {
            let body: Value = client
                .post(url)
                .bearer_auth(token)
                .json(&claim)
                .send()
                .await
                .expect("claim")
                .json()
                .await
                .expect("json");
            body
        }));
    }
    let mut seen = HashSet::new();
    let mut empty = 0;
    for task in tasks {
        let body = task.await.expect("task");
        match body["one_time_keys"][&alice.user_id][&alice.device_id].as_object() {
            Some(keys) if !keys.is_empty() => {
                for id in keys.keys() {
                    assert!(seen.insert(id.clone()), "{id} was handed out twice");
                }
            }
            _ => empty += 1,
        }
    }
    assert_eq!(seen.len(), 20, "every key once");
    assert_eq!(empty, 10, "the rest found nothing (no fallback key)");
    server.stop().await;
}

#[tokio::test]
async fn cross_signing_and_signatures() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let alice_device = upload_device(&server, &alice).await;
    let upload = "/_matrix/client/v3/keys/device_signing/upload";

    let master = Signer::cross_signing();
    let self_signing = Signer::cross_signing();
    let user_signing = Signer::cross_signing();
    let master_key = cross_signing_key(&alice, "master", &master);
    let mut self_signing_key = cross_signing_key(&alice, "self_signing", &self_signing);
    master.sign(&alice.user_id, &mut self_signing_key);
    let mut user_signing_key = cross_signing_key(&alice, "user_signing", &user_signing);
    master.sign(&alice.user_id, &mut user_signing_key);

    // Without a master key nothing can be checked.
    let (status, body) =
        server.post_as(&alice, upload, json!({"self_signing_key": self_signing_key})).await;
    assert_error(status, &body, 400, "M_MISSING_PARAM");
    let unsigned = cross_signing_key(&alice, "self_signing", &self_signing);
    let (status, body) = server
        .post_as(&alice, upload, json!({"master_key": master_key, "self_signing_key": unsigned}))
        .await;
    assert_error(status, &body, 400, "M_INVALID_SIGNATURE");
    let mut wrong_usage = cross_signing_key(&alice, "user_signing", &master);
    wrong_usage["user_id"] = json!(bob.user_id);
    let (status, body) = server.post_as(&alice, upload, json!({"master_key": wrong_usage})).await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");

    // The first upload needs no authentication, nor does repeating it.
    let all = json!({"master_key": master_key, "self_signing_key": self_signing_key, "user_signing_key": user_signing_key});
    for _ in 0..2 {
        let (status, body) = server.post_as(&alice, upload, all.clone()).await;
        assert_eq!(status, 200, "{body}");
    }

    // Alice signs her device with her self-signing key.
    let mut signed_device = device_keys(&alice, &alice_device);
    self_signing.sign(&alice.user_id, &mut signed_device);
    let (status, body) = server
        .post_as(
            &alice,
            "/_matrix/client/v3/keys/signatures/upload",
            json!({alice.user_id.clone(): {alice.device_id.clone(): signed_device}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["failures"].as_object().is_none_or(serde_json::Map::is_empty), "{body}");

    // Bob signs Alice's master key with his user-signing key.
    let bob_master = Signer::cross_signing();
    let bob_user_signing = Signer::cross_signing();
    let mut bob_usk = cross_signing_key(&bob, "user_signing", &bob_user_signing);
    bob_master.sign(&bob.user_id, &mut bob_usk);
    let (status, body) = server
        .post_as(&bob, upload, json!({"master_key": cross_signing_key(&bob, "master", &bob_master), "user_signing_key": bob_usk}))
        .await;
    assert_eq!(status, 200, "{body}");
    let mut alice_master_by_bob = master_key.clone();
    bob_user_signing.sign(&bob.user_id, &mut alice_master_by_bob);
    let mut forged = master_key.clone();
    Signer::cross_signing().sign(&bob.user_id, &mut forged);
    forged["signatures"][&bob.user_id] = json!({format!("ed25519:{}", bob_user_signing.public): forged["signatures"][&bob.user_id].as_object().and_then(|map| map.values().next()).cloned()});
    let (status, body) = server
        .post_as(
            &bob,
            "/_matrix/client/v3/keys/signatures/upload",
            json!({alice.user_id.clone(): {master.public.clone(): forged}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["failures"][&alice.user_id][&master.public]["errcode"], "M_INVALID_SIGNATURE",
        "{body}"
    );
    let (status, body) = server
        .post_as(
            &bob,
            "/_matrix/client/v3/keys/signatures/upload",
            json!({alice.user_id.clone(): {master.public.clone(): alice_master_by_bob}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["failures"].as_object().is_none_or(serde_json::Map::is_empty), "{body}");

    let query = json!({"device_keys": {alice.user_id.clone(): []}});
    let (_, as_bob) = server.post_as(&bob, "/_matrix/client/v3/keys/query", query.clone()).await;
    let (_, as_carol) =
        server.post_as(&carol, "/_matrix/client/v3/keys/query", query.clone()).await;
    let (_, as_alice) = server.post_as(&alice, "/_matrix/client/v3/keys/query", query).await;
    let bob_signature_key = format!("ed25519:{}", bob_user_signing.public);
    assert!(
        as_bob["master_keys"][&alice.user_id]["signatures"][&bob.user_id][&bob_signature_key]
            .is_string(),
        "{as_bob}"
    );
    assert!(
        as_carol["master_keys"][&alice.user_id]["signatures"].get(&bob.user_id).is_none(),
        "{as_carol}"
    );
    assert!(as_carol["self_signing_keys"][&alice.user_id].is_object());
    assert!(
        as_carol["user_signing_keys"].get(&alice.user_id).is_none(),
        "only Alice sees her user-signing key"
    );
    assert!(as_alice["user_signing_keys"][&alice.user_id].is_object(), "{as_alice}");
    let device_signatures =
        &as_carol["device_keys"][&alice.user_id][&alice.device_id]["signatures"][&alice.user_id];
    assert!(device_signatures[self_signing.key_id()].is_string(), "{device_signatures}");
    server.stop().await;
}

#[tokio::test]
async fn cross_signing_replacement_needs_authentication() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let upload = "/_matrix/client/v3/keys/device_signing/upload";
    let (status, body) = server
        .post_as(
            &alice,
            upload,
            json!({"master_key": cross_signing_key(&alice, "master", &Signer::cross_signing())}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let replacement =
        json!({"master_key": cross_signing_key(&alice, "master", &Signer::cross_signing())});
    let (status, body) = server.post_as(&alice, upload, replacement.clone()).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["flows"][0]["stages"][0], "m.login.password");
    let mut authenticated = replacement.clone();
    authenticated["auth"] = json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"},
        "password": "pw",
        "session": body["session"],
    });
    let (status, body) = server.post_as(&alice, upload, authenticated).await;
    assert_eq!(status, 200, "{body}");
    let (_, keys) = server
        .post_as(
            &alice,
            "/_matrix/client/v3/keys/query",
            json!({"device_keys": {alice.user_id.clone(): []}}),
        )
        .await;
    assert_eq!(keys["master_keys"][&alice.user_id]["keys"], replacement["master_key"]["keys"]);
    server.stop().await;
}

fn changed(body: &Value) -> Vec<String> {
    body["device_lists"]["changed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|user| user.as_str().map(str::to_owned))
        .collect()
}

fn left(body: &Value) -> Vec<String> {
    body["device_lists"]["left"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|user| user.as_str().map(str::to_owned))
        .collect()
}

fn next(body: &Value) -> String {
    body["next_batch"].as_str().expect("next_batch").to_owned()
}

#[tokio::test]
async fn device_list_changes_reach_exactly_those_who_share_a_room() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    let (status, _) =
        server.post_as(&bob, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    assert_eq!(status, 200);
    let bob_token = next(&sync(&server, &bob, None, "").await);
    let carol_token = next(&sync(&server, &carol, None, "").await);
    let alice_token = next(&sync(&server, &alice, None, "").await);

    // Alice's new keys: Bob shares a room and hears of it, Carol does not.
    upload_device(&server, &alice).await;
    let bob_view = sync(&server, &bob, Some(&bob_token), "").await;
    assert_eq!(changed(&bob_view), vec![alice.user_id.clone()], "{bob_view}");
    let carol_view = sync(&server, &carol, Some(&carol_token), "").await;
    assert!(changed(&carol_view).is_empty(), "{carol_view}");
    let (status, body) = server
        .get_as(
            &bob,
            &format!("/_matrix/client/v3/keys/changes?from={bob_token}&to={}", next(&bob_view)),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], json!([alice.user_id]));
    let (status, body) =
        server.get_as(&bob, "/_matrix/client/v3/keys/changes?from=garbage&to=s1").await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");

    // A new device (a login) and a deleted one are changes too.
    let bob_token = next(&bob_view);
    let second = server.login("alice", "pw").await;
    let bob_view = sync(&server, &bob, Some(&bob_token), "").await;
    assert_eq!(changed(&bob_view), vec![alice.user_id.clone()], "{bob_view}");
    let bob_token = next(&bob_view);
    let (status, body) = server
        .delete_as(&alice, &format!("/_matrix/client/v3/devices/{}", second.device_id), json!({
            "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw"}
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    let bob_view = sync(&server, &bob, Some(&bob_token), "").await;
    assert_eq!(changed(&bob_view), vec![alice.user_id.clone()], "{bob_view}");
    let bob_token = next(&bob_view);

    // Carol joining is new to Alice; Bob leaving makes him "left" for Alice.
    let alice_view = sync(&server, &alice, Some(&alice_token), "").await;
    let alice_token = next(&alice_view);
    let (status, _) =
        server.post_as(&carol, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    assert_eq!(status, 200);
    let alice_view = sync(&server, &alice, Some(&alice_token), "").await;
    assert!(changed(&alice_view).contains(&carol.user_id), "{alice_view}");
    let alice_token = next(&alice_view);
    let (status, _) =
        server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/leave"), json!({})).await;
    assert_eq!(status, 200);
    let alice_view = sync(&server, &alice, Some(&alice_token), "").await;
    assert_eq!(left(&alice_view), vec![bob.user_id.clone()], "{alice_view}");
    // And Bob, having left, sees Alice and Carol as left.
    let bob_view = sync(&server, &bob, Some(&bob_token), "").await;
    let mut gone = left(&bob_view);
    gone.sort();
    assert_eq!(gone, [alice.user_id.clone(), carol.user_id.clone()], "{bob_view}");
    server.stop().await;
}

fn session_key(
    first_message_index: u64,
    forwarded_count: u64,
    is_verified: bool,
    marker: &str,
) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": is_verified,
        "session_data": {"ephemeral": marker, "ciphertext": marker, "mac": marker},
    })
}

#[tokio::test]
async fn room_key_backups() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let (status, body) = server.get_as(&alice, "/_matrix/client/v3/room_keys/version").await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let algorithm = json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "abc"}});
    let (status, body) =
        server.post_as(&alice, "/_matrix/client/v3/room_keys/version", algorithm.clone()).await;
    assert_eq!(status, 200, "{body}");
    let version = body["version"].as_str().expect("version").to_owned();
    let (status, body) = server
        .post_as(&alice, "/_matrix/client/v3/room_keys/version", json!({"algorithm": 5}))
        .await;
    assert_eq!(status, 400, "{body}");

    let (status, info) = server.get_as(&alice, "/_matrix/client/v3/room_keys/version").await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["version"], version.as_str());
    assert_eq!(info["count"], 0);
    assert_eq!(info["auth_data"]["public_key"], "abc");
    let (status, body) =
        server.get_as(&bob, &format!("/_matrix/client/v3/room_keys/version/{version}")).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    let room = "!room:test.local";
    let keys_path = format!("/_matrix/client/v3/room_keys/keys?version={version}");
    let (status, body) = server
        .put_as(&alice, &keys_path, json!({"rooms": {room: {"sessions": {"s1": session_key(5, 1, false, "first"), "s2": session_key(0, 0, true, "two")}}}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 2);
    let first_etag = body["etag"].as_str().expect("etag").to_owned();

    // A worse key never replaces a better one; a better one does.
    let session_path =
        format!("/_matrix/client/v3/room_keys/keys/{}/s1?version={version}", encode(room));
    let (status, body) =
        server.put_as(&alice, &session_path, session_key(7, 0, false, "worse")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["etag"], first_etag.as_str(), "nothing changed");
    let (status, body) =
        server.put_as(&alice, &session_path, session_key(5, 0, false, "fewer-forwards")).await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["etag"], first_etag.as_str());
    assert_eq!(body["count"], 2);
    let (_, stored) = server.get_as(&alice, &session_path).await;
    assert_eq!(stored["session_data"]["ciphertext"], "fewer-forwards");
    let (status, _) =
        server.put_as(&alice, &session_path, session_key(9, 9, true, "verified")).await;
    assert_eq!(status, 200);
    let (_, stored) = server.get_as(&alice, &session_path).await;
    assert_eq!(stored["session_data"]["ciphertext"], "verified", "verified beats unverified");
    let (status, body) =
        server.put_as(&alice, &session_path, json!({"first_message_index": "x"})).await;
    assert_error(status, &body, 400, "M_BAD_JSON");

    let (_, all) = server.get_as(&alice, &keys_path).await;
    assert_eq!(
        all["rooms"][room]["sessions"].as_object().map(serde_json::Map::len),
        Some(2),
        "{all}"
    );
    let (_, room_keys) = server
        .get_as(
            &alice,
            &format!(
                "/_matrix/client/v3/room_keys/keys/{}?version={version}",
                encode("!other:test.local")
            ),
        )
        .await;
    assert_eq!(room_keys, json!({"sessions": {}}));
    let (status, body) = server
        .get_as(
            &alice,
            &format!("/_matrix/client/v3/room_keys/keys/{}/nope?version={version}", encode(room)),
        )
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    // Only the current version takes keys.
    let (status, body) =
        server.post_as(&alice, "/_matrix/client/v3/room_keys/version", algorithm.clone()).await;
    assert_eq!(status, 200, "{body}");
    let newer = body["version"].as_str().expect("version").to_owned();
    let (status, body) =
        server.put_as(&alice, &session_path, session_key(0, 0, true, "late")).await;
    assert_error(status, &body, 403, "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(body["current_version"], newer.as_str());

    // Updating keeps the algorithm; deleting keys and versions.
    let (status, body) = server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/room_keys/version/{newer}"),
            json!({"algorithm": "other", "auth_data": {}}),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/room_keys/version/{newer}"),
            json!({"algorithm": algorithm["algorithm"], "auth_data": {"public_key": "def"}, "version": "1"}),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/room_keys/version/{newer}"),
            json!({"algorithm": algorithm["algorithm"], "auth_data": {"public_key": "def"}, "version": newer}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, info) = server.get_as(&alice, "/_matrix/client/v3/room_keys/version").await;
    assert_eq!(info["auth_data"]["public_key"], "def");
    let (status, body) = server.delete_as(&alice, &session_path, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 1, "deleting from an older version still works");
    let (status, _) = server
        .delete_as(&alice, &format!("/_matrix/client/v3/room_keys/version/{newer}"), json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .delete_as(&alice, &format!("/_matrix/client/v3/room_keys/version/{newer}"), json!({}))
        .await;
    assert_eq!(status, 200, "deleting twice succeeds");
    let (_, info) = server.get_as(&alice, "/_matrix/client/v3/room_keys/version").await;
    assert_eq!(info["version"], version.as_str(), "the older version is current again");
    let (status, body) =
        server.get_as(&alice, &format!("/_matrix/client/v3/room_keys/version/{newer}")).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) =
        server.delete_as(&alice, "/_matrix/client/v3/room_keys/version/99", json!({})).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    server.stop().await;
}

fn encode(text: &str) -> String {
    text.replace('!', "%21").replace(':', "%3A")
}
