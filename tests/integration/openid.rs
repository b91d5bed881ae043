//! OpenID: a user asks for a token (`/user/{userId}/openid/request_token`), a third party
//! exchanges it at `/_matrix/federation/v1/openid/userinfo` for the user's id. Tokens
//! expire, survive a restart, die with the account, are good for nothing else, and forged
//! ones are refused.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{TestServer, User, assert_error, wait_until};

async fn request_token(server: &TestServer, user: &User) -> (u16, Value) {
    server
        .post_as(
            user,
            &format!("/_matrix/client/v3/user/{}/openid/request_token", user.user_id),
            json!({}),
        )
        .await
}

async fn userinfo(server: &TestServer, token: &str) -> (u16, Value) {
    let response = server
        .client
        .get(server.url("/_matrix/federation/v1/openid/userinfo"))
        .query(&[("access_token", token)])
        .send()
        .await
        .expect("request");
    crate::common::status_and_json(response).await
}

#[tokio::test]
async fn tokens_identify_their_user_to_third_parties() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let (status, body) = request_token(&server, &alice).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["matrix_server_name"], "test.local");
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().expect("token").to_owned();

    // Unauthenticated: the caller is a third-party service.
    let (status, body) = userinfo(&server, &token).await;
    assert_eq!((status, &body), (200, &json!({"sub": alice.user_id})));
    // Each request is a new token, each for its own user.
    let (_, body) = request_token(&server, &bob).await;
    let bobs = body["access_token"].as_str().expect("token").to_owned();
    assert_ne!(bobs, token);
    assert_eq!(userinfo(&server, &bobs).await.1["sub"], bob.user_id.as_str());

    // Forged, empty, absurd and client tokens are unknown.
    for forged in [format!("{token}x"), "tw_oi_nothing".to_owned(), "x".repeat(10_000)] {
        let (status, body) = userinfo(&server, &forged).await;
        assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    }
    let (status, body) = userinfo(&server, &alice.token).await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    let (status, body) = server.get("/_matrix/federation/v1/openid/userinfo").await;
    assert_eq!(status, 400, "no token at all: {body}");
    // An OpenID token is no access token.
    let (status, body) = server
        .request(reqwest::Method::GET, "/_matrix/client/v3/account/whoami", Some(&token), None)
        .await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
    // Nobody asks for another user's token.
    let (status, body) = server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/user/{}/openid/request_token", bob.user_id),
            json!({}),
        )
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = server
        .request(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/user/{}/openid/request_token", alice.user_id),
            None,
            Some(json!({})),
        )
        .await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");

    // Tokens are stored: a restart keeps them.
    server.restart().await;
    let (status, body) = userinfo(&server, &token).await;
    assert_eq!((status, &body["sub"]), (200, &json!(alice.user_id)));

    // A deactivated account's tokens die with it.
    let (status, body) = crate::account::with_password(
        &server,
        &bob,
        reqwest::Method::POST,
        "/_matrix/client/v3/account/deactivate",
        json!({}),
        "pw",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = userinfo(&server, &bobs).await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn tokens_expire_after_openid_token_ttl() {
    let server = TestServer::with_options(&["openid_token_ttl=1"]).await;
    let alice = server.register("alice", "pw").await;
    let (status, body) = request_token(&server, &alice).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 1);
    let token = body["access_token"].as_str().expect("token").to_owned();
    let (status, _) = userinfo(&server, &token).await;
    assert_eq!(status, 200, "valid at first");
    let expired =
        wait_until(Duration::from_secs(10), || async { userinfo(&server, &token).await.0 == 401 })
            .await;
    assert!(expired, "refused once its second has passed");
    let (status, body) = userinfo(&server, &token).await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn a_user_holds_a_bounded_number_of_live_tokens() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let limit = tuwunel::accounts::openid::MAX_LIVE_TOKENS;
    for _ in 0..limit {
        let (status, body) = request_token(&server, &alice).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = request_token(&server, &alice).await;
    assert_error(status, &body, 429, "M_LIMIT_EXCEEDED");
    assert!(body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{body}");
}

#[tokio::test]
async fn userinfo_is_closed_with_federation() {
    let server = TestServer::with_options(&["allow_federation=false"]).await;
    let alice = server.register("alice", "pw").await;
    let (status, body) = request_token(&server, &alice).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().expect("token").to_owned();
    let (status, body) = userinfo(&server, &token).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
}
