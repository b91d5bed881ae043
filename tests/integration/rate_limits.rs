//! Rate limits: registration and login per IP, failed logins per account.

use reqwest::Method;
use serde_json::json;

use crate::common::TestServer;

fn assert_limited(status: u16, body: &serde_json::Value) {
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
    assert!(body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{body}");
}

#[tokio::test]
async fn registration_is_limited_per_ip() {
    let mut server = TestServer::with_options(&[
        "rc_registration_per_second=0.001",
        "rc_registration_burst_count=2",
    ])
    .await;
    server.register("r1", "pw").await;
    server.register("r2", "pw").await;
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "r3", "auth": {"type": "m.login.dummy"}})),
        )
        .await;
    assert_limited(status, &body);
    server.stop().await;
}

#[tokio::test]
async fn logins_and_failed_logins_are_limited() {
    let mut server = TestServer::with_options(&[
        "rc_failed_login_per_second=0.001",
        "rc_failed_login_burst_count=2",
    ])
    .await;
    server.register("target", "right").await;
    let attempt = |password: &'static str| {
        let server = &server;
        async move {
            server
                .request(
                    Method::POST,
                    "/_matrix/client/v3/login",
                    None,
                    Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "target"}, "password": password})),
                )
                .await
        }
    };
    assert_eq!(attempt("wrong").await.0, 403);
    assert_eq!(attempt("wrong").await.0, 403);
    let (status, body) = attempt("right").await;
    assert_limited(status, &body);
    server.stop().await;

    let mut server =
        TestServer::with_options(&["rc_login_per_second=0.001", "rc_login_burst_count=2"]).await;
    server.register("busy", "pw").await;
    server.login("busy", "pw").await;
    server.login("busy", "pw").await;
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "busy"}, "password": "pw"})),
        )
        .await;
    assert_limited(status, &body);
    server.stop().await;
}
