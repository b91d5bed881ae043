//! Registration: UIA flows and sessions, tokens (configured, issued, bootstrap), username
//! rules, the first admin, guests, and the concurrent-registration race.

use std::sync::Arc;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestServer, assert_error, user_from};

async fn post_register(server: &TestServer, body: Value) -> (u16, Value) {
    server.request(Method::POST, "/_matrix/client/v3/register", None, Some(body)).await
}

/// Registers with a token: the token stage, then the dummy stage in the same session.
/// Returns the first failure, or the final answer.
async fn register_with_token(server: &TestServer, name: &str, token: &str) -> (u16, Value) {
    let (status, body) =
        post_register(server, json!({"username": name, "password": "pw", "auth": {"type": "m.login.registration_token", "token": token}}))
            .await;
    if status != 401 || body.get("errcode").is_some() {
        return (status, body);
    }
    let session = body["session"].clone();
    post_register(server, json!({"username": name, "password": "pw", "auth": {"type": "m.login.dummy", "session": session}})).await
}

#[tokio::test]
async fn registration_token_flow_with_uia_sessions() {
    let mut server = TestServer::with_options(&[
        "yes_i_am_very_very_sure_i_want_an_open_registration_server_prone_to_abuse=false",
        "registration_token=\"letmein\"",
    ])
    .await;

    // No auth: 401 with the flows and a session.
    let (status, challenge) =
        post_register(&server, json!({"username": "alice", "password": "pw"})).await;
    assert_eq!(status, 401, "{challenge}");
    assert_eq!(
        challenge["flows"],
        json!([{"stages": ["m.login.registration_token", "m.login.dummy"]}])
    );
    assert!(challenge["params"].is_object());
    assert!(challenge.get("completed").is_none());
    assert!(challenge.get("errcode").is_none());
    let session = challenge["session"].as_str().expect("session").to_owned();

    // Wrong token: 401, same session, errcode.
    let (status, body) = post_register(
        &server,
        json!({"username": "alice", "password": "pw", "auth": {"type": "m.login.registration_token", "token": "nope", "session": session}}),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert_eq!(body["session"], session.as_str());

    // A stage out of order: 401 with errcode.
    let (status, body) =
        post_register(&server, json!({"username": "alice", "password": "pw", "auth": {"type": "m.login.dummy", "session": session}})).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    // Unknown session: a fresh challenge.
    let (status, body) = post_register(
        &server,
        json!({"username": "alice", "password": "pw", "auth": {"type": "m.login.registration_token", "token": "letmein", "session": "bogus"}}),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_ne!(body["session"], "bogus");

    // Right token in the original session: the token stage completes...
    let (status, body) = post_register(
        &server,
        json!({"username": "Alice", "password": "pw", "auth": {"type": "m.login.registration_token", "token": "letmein", "session": session}}),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["completed"], json!(["m.login.registration_token"]));
    assert!(body.get("errcode").is_none());
    // ...and the dummy stage finishes the flow: registered and logged in.
    let (status, body) = post_register(
        &server,
        json!({"username": "Alice", "password": "pw", "initial_device_display_name": "Phone",
               "auth": {"type": "m.login.dummy", "session": session}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@alice:test.local", "usernames are lowercased");
    let alice = user_from(&body);
    let (status, devices) = server.get_as(&alice, "/_matrix/client/v3/devices").await;
    assert_eq!(status, 200);
    assert_eq!(devices["devices"][0]["display_name"], "Phone");

    // Token validity endpoint.
    let (status, body) = server
        .request(
            Method::GET,
            "/_matrix/client/v1/register/m.login.registration_token/validity?token=letmein",
            None,
            None,
        )
        .await;
    assert_eq!((status, body["valid"].clone()), (200, json!(true)));
    let (_, body) = server
        .request(
            Method::GET,
            "/_matrix/client/v1/register/m.login.registration_token/validity?token=nope",
            None,
            None,
        )
        .await;
    assert_eq!(body["valid"], json!(false));
    server.stop().await;
}

#[tokio::test]
async fn uia_sessions_expire() {
    let (mut server, clock) = TestServer::with_clock(&["uia_session_timeout_s=1"]).await;
    let (_, challenge) = post_register(&server, json!({"username": "late"})).await;
    let session = challenge["session"].as_str().expect("session").to_owned();
    clock.advance(std::time::Duration::from_millis(1200));
    let (status, body) = post_register(
        &server,
        json!({"username": "late", "auth": {"type": "m.login.dummy", "session": session}}),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_ne!(body["session"], session.as_str(), "an expired session is replaced");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    server.stop().await;
}

#[tokio::test]
async fn open_registration_offers_dummy_and_closed_registration_forbids() {
    let mut server = TestServer::start().await;
    let (status, challenge) = post_register(&server, json!({"username": "bob"})).await;
    assert_eq!(status, 401);
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.dummy"]}]));
    let bob = server.register("bob", "secret").await;
    assert_eq!(bob.user_id, "@bob:test.local");
    server.stop().await;

    let mut closed = TestServer::with_options(&["allow_registration=false"]).await;
    let (status, body) =
        post_register(&closed, json!({"username": "carol", "auth": {"type": "m.login.dummy"}}))
            .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    closed.stop().await;
}

#[tokio::test]
async fn usernames_are_checked() {
    let mut server =
        TestServer::with_options(&["forbidden_usernames=[\"^admin\", \"bad$\"]"]).await;
    server.register("taken", "pw").await;
    for (name, errcode) in [
        ("taken", "M_USER_IN_USE"),
        ("TAKEN", "M_USER_IN_USE"),
        ("conduit", "M_USER_IN_USE"),
        ("administrator", "M_USER_IN_USE"),
        ("verybad", "M_USER_IN_USE"),
        ("has space", "M_INVALID_USERNAME"),
        ("émile", "M_INVALID_USERNAME"),
        ("12345", "M_INVALID_USERNAME"),
        ("", "M_INVALID_USERNAME"),
    ] {
        let (status, body) =
            post_register(&server, json!({"username": name, "auth": {"type": "m.login.dummy"}}))
                .await;
        assert_error(status, &body, 400, errcode);
        let path = format!("/_matrix/client/v3/register/available?username={}", urlencode(name));
        let (status, body) = server.request(Method::GET, &path, None, None).await;
        assert_error(status, &body, 400, errcode);
    }
    let (status, body) = server
        .request(Method::GET, "/_matrix/client/v3/register/available?username=free", None, None)
        .await;
    assert_eq!((status, body["available"].clone()), (200, json!(true)));
    let long = "x".repeat(250);
    let (status, body) =
        post_register(&server, json!({"username": long, "auth": {"type": "m.login.dummy"}})).await;
    assert_error(status, &body, 400, "M_INVALID_USERNAME");
    server.stop().await;
}

fn urlencode(text: &str) -> String {
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
async fn first_user_is_admin_and_gets_the_displayname_suffix() {
    let mut server = TestServer::with_options(&["new_user_displayname_suffix=\"🌱\""]).await;
    let first = server.register("first", "pw").await;
    let second = server.register("second", "pw").await;
    let accounts = &server.server().services().accounts;
    assert!(accounts.is_admin(&ruma::UserId::parse(&first.user_id).expect("id")));
    assert!(!accounts.is_admin(&ruma::UserId::parse(&second.user_id).expect("id")));
    let (_, profile) = server.get_as(&first, "/_matrix/client/v3/profile/@first:test.local").await;
    assert_eq!(profile["displayname"], "first 🌱");
    server.stop().await;

    let mut plain = TestServer::with_options(&["new_user_displayname_suffix=\"\""]).await;
    let user = plain.register("plain", "pw").await;
    let (_, profile) = plain.get_as(&user, "/_matrix/client/v3/profile/@plain:test.local").await;
    assert_eq!(profile["displayname"], "plain");
    plain.stop().await;
}

#[tokio::test]
async fn inhibit_login_device_id_and_refresh_tokens() {
    let mut server = TestServer::start().await;
    let (status, body) =
        post_register(&server, json!({"username": "quiet", "password": "pw", "inhibit_login": true, "auth": {"type": "m.login.dummy"}}))
            .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@quiet:test.local");
    assert!(body.get("access_token").is_none(), "{body}");
    assert!(body.get("device_id").is_none_or(Value::is_null), "{body}");

    let (status, body) = post_register(
        &server,
        json!({"username": "chosen", "password": "pw", "device_id": "MYDEVICE", "refresh_token": true, "auth": {"type": "m.login.dummy"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["device_id"], "MYDEVICE");
    assert!(body["refresh_token"].is_string());
    assert!(body["expires_in_ms"].as_u64().is_some_and(|ms| ms > 0));
    server.stop().await;
}

#[tokio::test]
async fn guests_register_when_allowed_and_are_restricted() {
    let mut server = TestServer::with_options(&["allow_guest_registration=true"]).await;
    let (status, body) = server
        .request(Method::POST, "/_matrix/client/v3/register?kind=guest", None, Some(json!({})))
        .await;
    assert_eq!(status, 200, "{body}");
    let guest = user_from(&body);
    assert!(
        guest.user_id[1..]
            .split(':')
            .next()
            .expect("localpart")
            .bytes()
            .all(|b| b.is_ascii_digit())
    );
    let (status, whoami) = server.get_as(&guest, "/_matrix/client/v3/account/whoami").await;
    assert_eq!(status, 200);
    assert_eq!(whoami["is_guest"], true);
    let (status, body) = server.get_as(&guest, "/_matrix/client/v3/capabilities").await;
    assert_error(status, &body, 403, "M_GUEST_ACCESS_FORBIDDEN");
    let path = format!("/_matrix/client/v3/profile/{}/displayname", guest.user_id);
    let (status, body) = server.put_as(&guest, &path, json!({"displayname": "Visitor"})).await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;

    let mut server = TestServer::start().await;
    let (status, body) = server
        .request(Method::POST, "/_matrix/client/v3/register?kind=guest", None, Some(json!({})))
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    server.stop().await;
}

#[tokio::test]
async fn issued_tokens_have_limited_uses() {
    let mut server = TestServer::with_options(&[
        "yes_i_am_very_very_sure_i_want_an_open_registration_server_prone_to_abuse=false",
        "registration_token=\"config\"",
    ])
    .await;
    let services = server.server().services().clone();
    let output = tuwunel::admin::execute(&services, "token issue --once").await.expect("issue");
    let token = output.split('`').nth(1).expect("token in output").to_owned();

    let register = |name: &'static str, token: String| {
        let server = &server;
        async move { register_with_token(server, name, &token).await }
    };
    let (status, body) = register("one", token.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = register("two", token.clone()).await;
    assert_eq!(status, 401, "a single-use token works once: {body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    // The configured token is unlimited.
    assert_eq!(register("three", "config".to_owned()).await.0, 200);
    assert_eq!(register("four", "config".to_owned()).await.0, 200);

    let listing = tuwunel::admin::execute(&services, "token list").await.expect("list");
    assert!(listing.contains("1/1 used") && listing.contains("spent"), "{listing}");
    let second = tuwunel::admin::execute(&services, "token issue").await.expect("issue");
    let second = second.split('`').nth(1).expect("token").to_owned();
    tuwunel::admin::execute(&services, &format!("token revoke {second}")).await.expect("revoke");
    assert_eq!(register("five", second).await.0, 401, "a revoked token is refused");
    server.stop().await;
}

#[tokio::test]
async fn a_fresh_server_without_a_token_issues_itself_one() {
    let mut server = TestServer::with_options(&[
        "yes_i_am_very_very_sure_i_want_an_open_registration_server_prone_to_abuse=false",
    ])
    .await;
    let services = server.server().services().clone();
    let listing = tuwunel::admin::execute(&services, "token list").await.expect("list");
    let token = listing.split('`').nth(1).expect("a bootstrap token exists").to_owned();
    let (status, body) = register_with_token(&server, "founder", &token).await;
    assert_eq!(status, 200, "{body}");
    assert!(services.accounts.is_admin(ruma::user_id!("@founder:test.local")));
    let (status, _) = register_with_token(&server, "second", &token).await;
    assert_eq!(status, 401, "the bootstrap token is single-use");
    // After a restart no new bootstrap token appears: the server has its admin.
    drop(services);
    server.restart().await;
    let listing =
        tuwunel::admin::execute(server.server().services(), "token list").await.expect("list");
    assert!(!listing.contains("valid"), "{listing}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_of_one_name_have_one_winner() {
    let mut server = TestServer::start().await;
    let server_ref = Arc::new(server.url(""));
    let client = server.client.clone();
    let mut attempts = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        let base = Arc::clone(&server_ref);
        attempts.push(tokio::spawn(async move {
            let response = client
                .post(format!("{base}/_matrix/client/v3/register"))
                .json(&json!({"username": "racer", "password": "pw", "auth": {"type": "m.login.dummy"}}))
                .send()
                .await
                .expect("request");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or_default();
            (status, body)
        }));
    }
    let mut winners = 0;
    for attempt in attempts {
        let (status, body) = attempt.await.expect("task");
        match status {
            200 => winners += 1,
            400 => assert_eq!(body["errcode"], "M_USER_IN_USE", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(winners, 1);
    server.stop().await;
}

/// Registers with the configured token "letmein" up to the last stage and returns the session.
async fn session_after_token_stage(server: &TestServer, username: Option<&str>) -> String {
    let mut body = json!({"password": "pw", "auth": {"type": "m.login.registration_token", "token": "letmein"}});
    if let Some(username) = username {
        body["username"] = json!(username);
    }
    let (status, body) = post_register(server, body).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["completed"], json!(["m.login.registration_token"]), "{body}");
    body["session"].as_str().expect("session").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_uia_session_registers_one_account_however_many_final_requests() {
    let mut server = TestServer::with_options(&[
        "yes_i_am_very_very_sure_i_want_an_open_registration_server_prone_to_abuse=false",
        "registration_token=\"letmein\"",
    ])
    .await;
    // No username: each final request would get a generated one.
    let session = session_after_token_stage(&server, None).await;
    let base = server.url("");
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let client = server.client.clone();
        let base = base.clone();
        let session = session.clone();
        attempts.spawn(async move {
            let response = client
                .post(format!("{base}/_matrix/client/v3/register"))
                .json(&json!({"password": "pw", "auth": {"type": "m.login.dummy", "session": session}}))
                .send()
                .await
                .expect("request");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or_default())
        });
    }
    let mut registered = Vec::new();
    while let Some(attempt) = attempts.join_next().await {
        let (status, body) = attempt.expect("task");
        match status {
            200 => registered.push(body["user_id"].clone()),
            401 => assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(registered.len(), 1, "one session, one account: {registered:?}");
    // The session is spent.
    let (status, body) = post_register(
        &server,
        json!({"password": "pw", "auth": {"type": "m.login.dummy", "session": session}}),
    )
    .await;
    assert_error(status, &body, 401, "M_FORBIDDEN");
    server.stop().await;
}

#[tokio::test]
async fn the_username_cannot_change_between_uia_stages() {
    let mut server = TestServer::with_options(&[
        "yes_i_am_very_very_sure_i_want_an_open_registration_server_prone_to_abuse=false",
        "registration_token=\"letmein\"",
    ])
    .await;
    let session = session_after_token_stage(&server, Some("alice")).await;
    let (status, body) = post_register(
        &server,
        json!({"username": "mallory", "password": "pw", "auth": {"type": "m.login.dummy", "session": session}}),
    )
    .await;
    assert_error(status, &body, 401, "M_FORBIDDEN");
    assert_ne!(body["session"], session.as_str(), "a fresh session to start again with");
    let (status, body) = server
        .request(Method::GET, "/_matrix/client/v3/register/available?username=mallory", None, None)
        .await;
    assert_eq!((status, body["available"].clone()), (200, json!(true)), "{body}");

    // Leaving the username out of the last stage registers the one the session is bound to.
    let (status, body) = post_register(
        &server,
        json!({"password": "pw", "auth": {"type": "m.login.dummy", "session": session}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@alice:test.local");
    server.stop().await;
}
