//! Discovery endpoints: versions, .well-known documents, server versions and keys.

use crate::common::{TestServer, assert_error};

#[tokio::test]
async fn client_versions_lists_spec_versions() {
    let mut server = TestServer::start().await;
    let (status, body) = server.get("/_matrix/client/versions").await;
    assert_eq!(status, 200);
    let versions: Vec<&str> =
        body["versions"].as_array().expect("versions").iter().filter_map(|v| v.as_str()).collect();
    assert!(versions.contains(&"v1.14"), "{body}");
    assert!(versions.contains(&"v1.1"), "{body}");
    assert!(body.get("unstable_features").is_none_or(serde_json::Value::is_object), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn well_known_documents_come_from_config() {
    let mut server = TestServer::with_options(&[
        "well_known.client=\"https://matrix.example.org\"",
        "well_known.server=\"matrix.example.org:443\"",
        "well_known.support_email=\"admin@example.org\"",
        "well_known.support_mxid=\"@admin:example.org\"",
        "well_known.support_role=\"m.role.security\"",
        "well_known.support_page=\"https://example.org/help\"",
    ])
    .await;
    let (status, body) = server.get("/.well-known/matrix/client").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["m.homeserver"]["base_url"], "https://matrix.example.org");

    let (status, body) = server.get("/.well-known/matrix/server").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["m.server"], "matrix.example.org:443");

    let (status, body) = server.get("/.well-known/matrix/support").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["support_page"], "https://example.org/help");
    assert_eq!(body["contacts"][0]["role"], "m.role.security");
    assert_eq!(body["contacts"][0]["email_address"], "admin@example.org");
    assert_eq!(body["contacts"][0]["matrix_id"], "@admin:example.org");
    server.stop().await;
}

#[tokio::test]
async fn unset_well_known_documents_are_not_found() {
    let mut server = TestServer::start().await;
    for path in
        ["/.well-known/matrix/client", "/.well-known/matrix/server", "/.well-known/matrix/support"]
    {
        let (status, body) = server.get(path).await;
        assert_error(status, &body, 404, "M_NOT_FOUND");
    }
    server.stop().await;
}

#[tokio::test]
async fn server_versions_for_servers_and_monitoring() {
    let mut server = TestServer::start().await;
    let (status, body) = server.get("/_matrix/federation/v1/version").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["server"]["name"], "Tuwunel");
    assert_eq!(body["server"]["version"], env!("CARGO_PKG_VERSION"));

    let (status, body) = server.get("/_tuwunel/server_version").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "Tuwunel");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    server.stop().await;
}

#[tokio::test]
async fn federation_endpoints_refuse_when_federation_is_off() {
    let mut server = TestServer::with_options(&["allow_federation=false"]).await;
    let (status, body) = server.get("/_matrix/federation/v1/version").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = server.get("/_matrix/key/v2/server").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    // The monitoring endpoint is not a federation endpoint.
    let (status, _) = server.get("/_tuwunel/server_version").await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn server_keys_are_self_signed_and_stable_across_restarts() {
    let mut server = TestServer::start().await;
    let (status, body) = server.get("/_matrix/key/v2/server").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["server_name"], "test.local");
    let keys = body["verify_keys"].as_object().expect("verify_keys");
    assert_eq!(keys.len(), 1);
    let (key_id, key) = keys.iter().next().expect("one key");
    assert!(key_id.starts_with("ed25519:"), "{key_id}");
    assert!(body["signatures"]["test.local"][key_id].is_string(), "{body}");
    assert!(body["valid_until_ts"].as_u64().expect("valid_until_ts") > 0);

    // Verify the signature with ruma against the published key.
    let object: ruma::CanonicalJsonObject =
        serde_json::from_value(body.clone()).expect("canonical");
    let mut public_keys = std::collections::BTreeMap::new();
    public_keys.insert(
        key_id.clone(),
        ruma::serde::Base64::parse(key["key"].as_str().expect("key")).expect("base64"),
    );
    let mut key_map = std::collections::BTreeMap::new();
    key_map.insert("test.local".to_owned(), public_keys);
    ruma::signatures::verify_json(&key_map, &object).expect("signature verifies");

    server.restart().await;
    let (_, again) = server.get("/_matrix/key/v2/server").await;
    assert_eq!(again["verify_keys"], body["verify_keys"], "the key survives a restart");
    server.stop().await;
}

/// Endpoints each spec version added (its changelog's "new endpoints"), as `(version,
/// method, path)` with sample parameters. A server that advertises a version must route
/// all of them; `/versions` must not list a version whose endpoints are missing.
const ADDED_ENDPOINTS: &[(&str, &str, &str)] = &[
    ("v1.1", "POST", "/_matrix/client/v3/keys/device_signing/upload"),
    ("v1.1", "POST", "/_matrix/client/v3/keys/signatures/upload"),
    ("v1.1", "GET", "/_matrix/client/v3/room_keys/version"),
    ("v1.1", "GET", "/_matrix/client/v3/room_keys/keys"),
    ("v1.1", "POST", "/_matrix/client/v3/knock/!room:test.local"),
    ("v1.2", "GET", "/_matrix/client/v1/rooms/!room:test.local/hierarchy"),
    ("v1.2", "GET", "/_matrix/client/v1/register/m.login.registration_token/validity?token=x"),
    ("v1.3", "POST", "/_matrix/client/v3/refresh"),
    ("v1.4", "GET", "/_matrix/client/v1/rooms/!room:test.local/threads"),
    ("v1.6", "GET", "/_matrix/client/v1/rooms/!room:test.local/timestamp_to_event?ts=1&dir=b"),
    ("v1.7", "POST", "/_matrix/media/v1/create"),
    ("v1.7", "PUT", "/_matrix/media/v3/upload/test.local/abc"),
    ("v1.7", "POST", "/_matrix/client/v1/login/get_token"),
    ("v1.11", "GET", "/_matrix/client/v1/media/config"),
    ("v1.11", "GET", "/_matrix/client/v1/media/download/test.local/abc"),
    ("v1.11", "GET", "/_matrix/client/v1/media/download/test.local/abc/name.txt"),
    ("v1.11", "GET", "/_matrix/client/v1/media/thumbnail/test.local/abc?width=1&height=1"),
    // (v1.11's preview_url is left out: with previews off it answers M_UNRECOGNIZED by
    // design, as Synapse's does.)
    ("v1.13", "POST", "/_matrix/client/v3/rooms/!room:test.local/report"),
    ("v1.14", "POST", "/_matrix/client/v3/users/@someone:test.local/report"),
    ("v1.15", "GET", "/_matrix/client/v1/room_summary/!room:test.local"),
    ("v1.18", "GET", "/_matrix/client/v1/admin/suspend/@someone:test.local"),
    ("v1.18", "GET", "/_matrix/client/v1/admin/lock/@someone:test.local"),
    ("v1.19", "GET", "/_matrix/client/v1/mutual_rooms?user_id=@someone:test.local"),
];

/// Whether the server routes `method path` at all (an unrouted path answers 404 or 405
/// `M_UNRECOGNIZED`; a routed one answers anything else, an error included).
async fn routed(server: &TestServer, token: &str, method: &str, path: &str) -> bool {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let body = (method != reqwest::Method::GET).then(|| serde_json::json!({}));
    let (status, body) = server.request(method, path, Some(token), body).await;
    !(matches!(status, 404 | 405) && body["errcode"] == "M_UNRECOGNIZED")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_advertised_version_is_served() {
    let mut server = TestServer::start().await;
    let user = server.register("versions", "versions-password").await;
    let (status, body) = server.get("/_matrix/client/versions").await;
    assert_eq!(status, 200, "{body}");
    let advertised: Vec<String> = body["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|version| version.as_str().map(str::to_owned))
        .collect();
    let mut missing = Vec::new();
    for (version, method, path) in ADDED_ENDPOINTS {
        let served = routed(&server, &user.token, method, path).await;
        let minor = |v: &str| v.trim_start_matches("v1.").parse::<u32>().unwrap_or(0);
        // A version promises everything added up to it.
        let promised = advertised
            .iter()
            .filter(|listed| listed.starts_with("v1."))
            .any(|listed| minor(listed) >= minor(version));
        if promised && !served {
            missing.push(format!("{version}: {method} {path}"));
        }
    }
    assert!(missing.is_empty(), "advertised {advertised:?} but these are not served: {missing:#?}");
    server.stop().await;
}
