//! Calls: TURN credentials (`/voip/turnServer`) from a shared secret, a secret file or a
//! static pair, checked against the TURN REST API formula computed independently (Python's
//! `hmac`); guests refused unless allowed. MatrixRTC: transport discovery (MSC4143) from
//! `well_known.livekit_url` / `rtc_transports`, and a LiveKit JWT service's check of a user's
//! OpenID token through the federation userinfo endpoint.

use std::{process::Command, time::Duration};

use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    common::{TestServer, User, assert_error, status_and_json, user_from},
    testbed::{Ca, FedServer},
};

const TURN: &str = "/_matrix/client/v3/voip/turnServer";
const URIS: &str =
    r#"turn_uris=["turn:turn.test.local:3478?transport=udp", "turns:turn.test.local:5349"]"#;

/// base64(HMAC-SHA1(secret, username)), computed by Python rather than by our code.
fn python_rest_api_password(secret: &str, username: &str) -> String {
    let script = "import base64, hashlib, hmac, sys\n\
        print(base64.b64encode(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), \
        hashlib.sha1).digest()).decode())";
    let output = Command::new("python3")
        .args(["-c", script, secret, username])
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8").trim().to_owned()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

async fn guest(server: &TestServer) -> User {
    let (status, body) = server
        .request(Method::POST, "/_matrix/client/v3/register?kind=guest", None, Some(json!({})))
        .await;
    assert_eq!(status, 200, "{body}");
    user_from(&body)
}

/// Checks an answer made from `secret` for `user`, issued between `before` and `after`.
fn assert_rest_api_credentials(
    body: &Value,
    secret: &str,
    user: &User,
    ttl: u64,
    range: (u64, u64),
) {
    assert_eq!(
        body["uris"],
        json!(["turn:turn.test.local:3478?transport=udp", "turns:turn.test.local:5349"])
    );
    assert_eq!(body["ttl"], ttl);
    let username = body["username"].as_str().expect("username");
    let (expiry, user_id) = username.split_once(':').expect("expiry:user");
    assert_eq!(user_id, user.user_id);
    let expiry: u64 = expiry.parse().expect("unix seconds");
    assert!((range.0 + ttl..=range.1 + ttl).contains(&expiry), "{expiry} vs {range:?}+{ttl}");
    assert_eq!(body["password"], python_rest_api_password(secret, username));
}

#[tokio::test]
async fn a_shared_secret_gives_time_limited_rest_api_credentials() {
    let mut server = TestServer::with_options(&[
        URIS,
        r#"turn_secret="n0t so s3cret""#,
        "turn_ttl=600",
        "allow_guest_registration=true",
    ])
    .await;
    let alice = server.register("alice", "pw").await;
    let before = unix_now();
    let (status, body) = server.get_as(&alice, TURN).await;
    let after = unix_now();
    assert_eq!(status, 200, "{body}");
    assert_rest_api_credentials(&body, "n0t so s3cret", &alice, 600, (before, after));

    // Guests are refused by default.
    let visitor = guest(&server).await;
    let (status, body) = server.get_as(&visitor, TURN).await;
    assert_error(status, &body, 403, "M_GUEST_ACCESS_FORBIDDEN");
    let (status, body) = server.get(TURN).await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");
    server.stop().await;
}

#[tokio::test]
async fn the_secret_file_wins_and_guests_are_served_when_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("turn_secret");
    std::fs::write(&file, "  from-the-file\n").expect("write secret");
    let file_option = format!("turn_secret_file=\"{}\"", file.display());
    let mut server = TestServer::with_options(&[
        URIS,
        &file_option,
        r#"turn_secret="from-the-config""#,
        "allow_guest_registration=true",
        "turn_allow_guests=true",
    ])
    .await;
    let visitor = guest(&server).await;
    let before = unix_now();
    let (status, body) = server.get_as(&visitor, TURN).await;
    let after = unix_now();
    assert_eq!(status, 200, "{body}");
    assert_rest_api_credentials(&body, "from-the-file", &visitor, 86_400, (before, after));
    server.stop().await;
}

#[tokio::test]
async fn credentials_follow_the_servers_clock() {
    let (mut server, clock) = TestServer::with_clock(&[URIS, r#"turn_secret="s""#]).await;
    let alice = server.register("alice", "pw").await;
    let expiry = |body: &Value| -> u64 {
        let username = body["username"].as_str().expect("username");
        username.split_once(':').expect("expiry").0.parse().expect("seconds")
    };
    let first = expiry(&server.get_as(&alice, TURN).await.1);
    clock.advance(Duration::from_secs(3_600));
    let later = expiry(&server.get_as(&alice, TURN).await.1);
    assert_eq!(later - first, 3_600);
    server.stop().await;
}

#[tokio::test]
async fn static_credentials_and_no_configuration() {
    let mut server = TestServer::with_options(&[
        URIS,
        r#"turn_username="tuwunel""#,
        r#"turn_password="static-pw""#,
    ])
    .await;
    let alice = server.register("alice", "pw").await;
    let (status, body) = server.get_as(&alice, TURN).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((&body["username"], &body["password"]), (&json!("tuwunel"), &json!("static-pw")));
    assert_eq!(body["ttl"], 86_400);
    assert_eq!(body["uris"].as_array().map(Vec::len), Some(2));
    server.stop().await;

    // A secret without URIs is nothing to hand out: today's empty answer.
    let mut server = TestServer::with_options(&[r#"turn_secret="s""#]).await;
    let alice = server.register("alice", "pw").await;
    assert_eq!(server.get_as(&alice, TURN).await, (200, json!({})));
    server.stop().await;
}

const TRANSPORTS: &str = "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports";

#[tokio::test]
async fn rtc_transports_are_discovered_from_the_configuration() {
    let mut server = TestServer::with_options(&[
        r#"well_known.client="https://matrix.test.local""#,
        r#"well_known.livekit_url="https://jwt.test.local""#,
        r#"well_known.rtc_transports=[{ type = "org.example.mesh", relay = "wss://mesh.test.local", hops = 2 }]"#,
    ])
    .await;
    let expected = json!([
        {"type": "livekit", "livekit_service_url": "https://jwt.test.local"},
        {"type": "org.example.mesh", "relay": "wss://mesh.test.local", "hops": 2},
    ]);
    let alice = server.register("alice", "pw").await;
    let (status, body) = server.get_as(&alice, TRANSPORTS).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rtc_transports"], expected);
    assert_eq!(body["transports"], expected);
    // Only for signed-in users.
    let (status, body) = server.get(TRANSPORTS).await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");

    let (status, body) = server.get("/.well-known/matrix/client").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["org.matrix.msc4143.rtc_foci"], expected);
    assert_eq!(body["m.homeserver"]["base_url"], "https://matrix.test.local");
    let (_, body) = server.get("/_matrix/client/versions").await;
    assert_eq!(body["unstable_features"]["org.matrix.msc4143"], true, "{body}");
    server.stop().await;

    // Nothing configured: an empty list, nothing in .well-known, nothing advertised.
    let mut server =
        TestServer::with_options(&[r#"well_known.client="https://matrix.test.local""#]).await;
    let alice = server.register("alice", "pw").await;
    assert_eq!(server.get_as(&alice, TRANSPORTS).await.1["rtc_transports"], json!([]));
    let (_, body) = server.get("/.well-known/matrix/client").await;
    assert!(body.get("org.matrix.msc4143.rtc_foci").is_none(), "{body}");
    let (_, body) = server.get("/_matrix/client/versions").await;
    assert!(body["unstable_features"].get("org.matrix.msc4143").is_none(), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn a_transport_without_a_type_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::common::init_logging();
    let file = crate::common::write_config(dir.path());
    let inputs = tuwunel::config::Inputs {
        files: vec![file],
        env: Vec::new(),
        options: vec![
            r#"well_known.rtc_transports=[{ livekit_service_url = "https://x" }]"#.to_owned(),
        ],
    };
    let error = tuwunel::Config::load(&inputs).expect_err("refused");
    assert!(error.to_string().contains("rtc_transports"), "{error}");
}

/// What a LiveKit JWT service (lk-jwt-service) does with the OpenID token Element Call hands
/// it: reach the user's server by the token's `matrix_server_name` as federation does (here
/// `localhost:PORT`, over TLS), exchange the token at the userinfo endpoint, and accept the
/// user only if its id belongs to that server.
#[tokio::test]
async fn a_livekit_jwt_service_verifies_a_user_by_openid() {
    let ca = Ca::new();
    let mut home =
        FedServer::start(&ca, &[r#"well_known.livekit_url="https://jwt.test.local""#]).await;
    let alice = home.server.register("alice", "pw").await;

    // The client finds the JWT service, then asks for a token to hand it.
    let (_, body) = home.server.get_as(&alice, TRANSPORTS).await;
    assert_eq!(body["rtc_transports"][0]["livekit_service_url"], "https://jwt.test.local");
    let path = format!("/_matrix/client/v3/user/{}/openid/request_token", alice.user_id);
    let (status, openid) = home.server.post_as(&alice, &path, json!({})).await;
    assert_eq!(status, 200, "{openid}");

    // The JWT service's side: only the token's own fields, over TLS, as another server would.
    let verify = |openid: Value| {
        let client = ca.client();
        async move {
            assert_eq!(openid["token_type"], "Bearer");
            let server_name = openid["matrix_server_name"].as_str().expect("server name");
            let response = client
                .get(format!("https://{server_name}/_matrix/federation/v1/openid/userinfo"))
                .query(&[("access_token", openid["access_token"].as_str().expect("token"))])
                .send()
                .await
                .expect("userinfo over TLS");
            let (status, body) = status_and_json(response).await;
            if status != 200 {
                return Err((status, body));
            }
            let sub = body["sub"].as_str().expect("sub").to_owned();
            assert_eq!(sub.split_once(':').map(|(_, server)| server), Some(server_name));
            Ok(sub)
        }
    };
    assert_eq!(verify(openid.clone()).await, Ok(alice.user_id.clone()));
    assert_eq!(openid["matrix_server_name"], home.name.as_str());

    // A forged token is refused the way the service expects (401 M_UNKNOWN_TOKEN).
    let mut forged = openid.clone();
    forged["access_token"] = json!("tw_oi_forged");
    let (status, body) = verify(forged).await.expect_err("refused");
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    home.stop().await;
}
