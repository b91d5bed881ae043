//! Login, tokens and sessions: password and token login, refresh rotation, soft logout,
//! logout, whoami, and how tokens are presented.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestServer, User, assert_error, user_from, wait_until};

async fn login_body(server: &TestServer, body: Value) -> (u16, Value) {
    server.request(Method::POST, "/_matrix/client/v3/login", None, Some(body)).await
}

#[tokio::test]
async fn password_login_accepts_localpart_full_id_and_legacy_user() {
    let mut server = TestServer::start().await;
    server.register("dana", "hunter2").await;

    let (status, flows) = server.request(Method::GET, "/_matrix/client/v3/login", None, None).await;
    assert_eq!(status, 200);
    let types: Vec<&str> = flows["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .filter_map(|f| f["type"].as_str())
        .collect();
    assert!(types.contains(&"m.login.password") && types.contains(&"m.login.token"), "{flows}");

    for identifier in ["dana", "@dana:test.local", "DANA"] {
        let (status, body) = login_body(
            &server,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": identifier}, "password": "hunter2"}),
        )
        .await;
        assert_eq!(status, 200, "{identifier}: {body}");
        assert_eq!(body["user_id"], "@dana:test.local");
    }
    let (status, body) = login_body(
        &server,
        json!({"type": "m.login.password", "user": "dana", "password": "hunter2"}),
    )
    .await;
    assert_eq!(status, 200, "legacy user field: {body}");

    for (user, password) in
        [("dana", "wrong"), ("nobody", "hunter2"), ("@dana:elsewhere.org", "hunter2")]
    {
        let (status, body) = login_body(
            &server,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}),
        )
        .await;
        assert_error(status, &body, 403, "M_FORBIDDEN");
    }
    let (status, body) = login_body(&server, json!({"type": "m.login.magic"})).await;
    assert_eq!(status, 400, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn whoami_and_token_presentation() {
    let mut server = TestServer::start().await;
    let erin = server.register("erin", "pw").await;
    let (status, body) = server.get_as(&erin, "/_matrix/client/v3/account/whoami").await;
    assert_eq!(status, 200);
    assert_eq!(body["user_id"], "@erin:test.local");
    assert_eq!(body["device_id"], erin.device_id.as_str());
    assert!(body.get("is_guest").is_none_or(|guest| guest == false), "{body}");

    // Query parameter token (deprecated but supported).
    let path = format!("/_matrix/client/v3/account/whoami?access_token={}", erin.token);
    let (status, _) = server.request(Method::GET, &path, None, None).await;
    assert_eq!(status, 200);

    let (status, body) =
        server.request(Method::GET, "/_matrix/client/v3/account/whoami", None, None).await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");
    let (status, body) = server
        .request(Method::GET, "/_matrix/client/v3/account/whoami", Some("not-a-token"), None)
        .await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    assert!(body.get("soft_logout").is_none_or(|soft| soft == false), "{body}");
    let response = server
        .client
        .get(server.url("/_matrix/client/v3/account/whoami"))
        .header("authorization", format!("Basic {}", erin.token))
        .send()
        .await
        .expect("request");
    let (status, body) = crate::common::status_and_json(response).await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    server.stop().await;
}

#[tokio::test]
async fn logout_and_logout_all_kill_tokens_at_once() {
    let mut server = TestServer::start().await;
    let first = server.register("frank", "pw").await;
    let second = server.login("frank", "pw").await;
    let third = server.login("frank", "pw").await;

    let (status, _) = server.post_as(&first, "/_matrix/client/v3/logout", json!({})).await;
    assert_eq!(status, 200);
    let (status, body) = server.get_as(&first, "/_matrix/client/v3/account/whoami").await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    let (status, _) = server.get_as(&second, "/_matrix/client/v3/account/whoami").await;
    assert_eq!(status, 200, "other sessions survive a logout");
    let (_, devices) = server.get_as(&second, "/_matrix/client/v3/devices").await;
    assert_eq!(
        devices["devices"].as_array().expect("devices").len(),
        2,
        "the logged-out device is gone"
    );

    let (status, _) = server.post_as(&second, "/_matrix/client/v3/logout/all", json!({})).await;
    assert_eq!(status, 200);
    for user in [&second, &third] {
        let (status, _) = server.get_as(user, "/_matrix/client/v3/account/whoami").await;
        assert_eq!(status, 401);
    }
    server.stop().await;
}

#[tokio::test]
async fn login_with_an_existing_device_id_replaces_its_token() {
    let mut server = TestServer::start().await;
    server.register("gina", "pw").await;
    let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "gina"}, "password": "pw", "device_id": "LAPTOP"});
    let (_, first) = login_body(&server, body.clone()).await;
    let (_, second) = login_body(&server, body).await;
    assert_eq!(first["device_id"], "LAPTOP");
    assert_eq!(second["device_id"], "LAPTOP");
    let old = user_from(&first);
    let (status, _) = server.get_as(&old, "/_matrix/client/v3/account/whoami").await;
    assert_eq!(status, 401, "the device's previous token is invalidated");
    let new = user_from(&second);
    let (status, _) = server.get_as(&new, "/_matrix/client/v3/account/whoami").await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn refresh_tokens_rotate_and_expired_tokens_soft_logout() {
    let (mut server, clock) = TestServer::with_clock(&["access_token_ttl=2"]).await;
    server.register("hank", "pw").await;
    let (status, body) = login_body(
        &server,
        json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "hank"}, "password": "pw", "refresh_token": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in_ms"], 2000);
    let first_refresh = body["refresh_token"].as_str().expect("refresh token").to_owned();
    let first = user_from(&body);

    // Refreshing gives a new pair; the old refresh token stays valid until the new access
    // token is used.
    let refresh = |token: String| {
        let server = &server;
        async move {
            server
                .request(
                    Method::POST,
                    "/_matrix/client/v3/refresh",
                    None,
                    Some(json!({"refresh_token": token})),
                )
                .await
        }
    };
    let (status, second) = refresh(first_refresh.clone()).await;
    assert_eq!(status, 200, "{second}");
    let second_access = second["access_token"].as_str().expect("access").to_owned();
    let second_refresh = second["refresh_token"].as_str().expect("refresh").to_owned();
    assert_ne!(second_refresh, first_refresh);
    assert_eq!(second["expires_in_ms"], 2000);
    let (status, body) = server.get_as(&first, "/_matrix/client/v3/account/whoami").await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");

    let second_user = User {
        user_id: first.user_id.clone(),
        token: second_access,
        device_id: first.device_id.clone(),
    };
    let (status, _) = server.get_as(&second_user, "/_matrix/client/v3/account/whoami").await;
    assert_eq!(status, 200);
    // Using the new access token retired the first refresh token.
    let retired = wait_until(std::time::Duration::from_secs(5), || {
        let first_refresh = first_refresh.clone();
        let refresh = &refresh;
        async move { refresh(first_refresh).await.0 == 401 }
    })
    .await;
    assert!(retired, "the exchanged refresh token still works");

    // Once the access token expires, requests soft-logout and a refresh recovers.
    clock.advance(std::time::Duration::from_secs(2));
    let (status, body) = server.get_as(&second_user, "/_matrix/client/v3/account/whoami").await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(body["soft_logout"], json!(true));
    let (status, third) = refresh(second_refresh).await;
    assert_eq!(status, 200, "{third}");
    let (status, body) = refresh("tw_rt_unknown".to_owned()).await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    server.stop().await;
}

#[tokio::test]
async fn login_tokens_sign_in_another_device_once() {
    let mut server = TestServer::start().await;
    let ivy = server.register("ivy", "pw").await;
    let (status, challenge) =
        server.post_as(&ivy, "/_matrix/client/v1/login/get_token", json!({})).await;
    assert_eq!(status, 401, "{challenge}");
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.password"]}]));
    let session = challenge["session"].as_str().expect("session");
    let (status, body) = server
        .post_as(
            &ivy,
            "/_matrix/client/v1/login/get_token",
            json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "ivy"}, "password": "pw", "session": session}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["expires_in_ms"].as_u64().is_some_and(|ms| ms > 0));
    let token = body["login_token"].as_str().expect("token").to_owned();
    let (status, body) =
        login_body(&server, json!({"type": "m.login.token", "token": token})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@ivy:test.local");
    let (status, body) =
        login_body(&server, json!({"type": "m.login.token", "token": token})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    server.stop().await;
}
