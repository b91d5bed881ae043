//! Account management: devices (with UIA for deletion and activity tracking), password
//! changes with and without logging out other devices, and deactivation.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestServer, User, assert_error};

fn password_auth(user: &str, password: &str, session: &str) -> Value {
    json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password, "session": session})
}

/// Runs a UIA-protected request: first without auth (expecting the password flow), then
/// with the password.
pub(crate) async fn with_password(
    server: &TestServer,
    user: &User,
    method: Method,
    path: &str,
    body: Value,
    password: &str,
) -> (u16, Value) {
    let (status, challenge) =
        server.request(method.clone(), path, Some(&user.token), Some(body.clone())).await;
    assert_eq!(status, 401, "{path}: {challenge}");
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.password"]}]));
    let session = challenge["session"].as_str().expect("session");
    let localpart = user.user_id[1..].split(':').next().expect("localpart");
    let mut body = body;
    body["auth"] = password_auth(localpart, password, session);
    server.request(method, path, Some(&user.token), Some(body)).await
}

#[tokio::test]
async fn devices_are_listed_renamed_and_deleted_with_uia() {
    let mut server = TestServer::start().await;
    let phone = server.register("jack", "pw").await;
    let laptop = server.login("jack", "pw").await;

    let (status, body) = server.get_as(&phone, "/_matrix/client/v3/devices").await;
    assert_eq!(status, 200);
    let devices = body["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 2);
    for device in devices {
        assert!(device["last_seen_ts"].as_u64().is_some(), "activity is tracked: {device}");
        assert_eq!(device["last_seen_ip"], "127.0.0.1");
    }

    let path = format!("/_matrix/client/v3/devices/{}", laptop.device_id);
    let (status, _) = server.put_as(&phone, &path, json!({"display_name": "Work laptop"})).await;
    assert_eq!(status, 200);
    let (status, device) = server.get_as(&phone, &path).await;
    assert_eq!(status, 200);
    assert_eq!(device["display_name"], "Work laptop");
    assert_eq!(device["device_id"], laptop.device_id.as_str());

    let (status, body) = server.get_as(&phone, "/_matrix/client/v3/devices/NOSUCHDEVICE").await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = server
        .put_as(&phone, "/_matrix/client/v3/devices/NOSUCHDEVICE", json!({"display_name": "x"}))
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    // Deleting needs the password; a wrong one is a 401 with an error.
    let (status, challenge) = server.delete_as(&phone, &path, json!({})).await;
    assert_eq!(status, 401);
    let session = challenge["session"].as_str().expect("session");
    let (status, body) = server
        .delete_as(&phone, &path, json!({"auth": password_auth("jack", "wrong", session)}))
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    let (status, body) = server
        .delete_as(&phone, &path, json!({"auth": password_auth("jack", "pw", session)}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.get_as(&laptop, "/_matrix/client/v3/account/whoami").await;
    assert_error(status, &body, 401, "M_UNKNOWN_TOKEN");

    // Bulk deletion.
    let tablet = server.login("jack", "pw").await;
    let watch = server.login("jack", "pw").await;
    let (status, body) = with_password(
        &server,
        &phone,
        Method::POST,
        "/_matrix/client/v3/delete_devices",
        json!({"devices": [tablet.device_id, watch.device_id]}),
        "pw",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = server.get_as(&phone, "/_matrix/client/v3/devices").await;
    assert_eq!(body["devices"].as_array().expect("devices").len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn device_activity_survives_a_restart() {
    let mut server = TestServer::start().await;
    let user = server.register("kate", "pw").await;
    let (_, before) = server.get_as(&user, "/_matrix/client/v3/devices").await;
    let seen = before["devices"][0]["last_seen_ts"].as_u64().expect("seen");
    server.restart().await;
    let (_, after) = server.get_as(&user, "/_matrix/client/v3/devices").await;
    assert!(after["devices"][0]["last_seen_ts"].as_u64().expect("seen") >= seen);
    // Read straight from the database, bypassing the in-memory activity.
    use tuwunel::storage::{codec::Json, users::LAST_SEEN_TABLE};
    let stored = LAST_SEEN_TABLE
        .get(server.server().services().storage.engine(), &(user.id(), user.device()))
        .expect("read");
    let Some(Json(stored)) = stored else { panic!("activity was not saved at shutdown") };
    assert!(stored.ts_ms >= seen);
    server.stop().await;
}

#[tokio::test]
async fn password_change_logs_out_other_devices_unless_asked_not_to() {
    let mut server = TestServer::start().await;
    let main = server.register("liam", "old").await;
    let other = server.login("liam", "old").await;

    let (status, body) = with_password(
        &server,
        &main,
        Method::POST,
        "/_matrix/client/v3/account/password",
        json!({"new_password": "new"}),
        "old",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.get_as(&main, "/_matrix/client/v3/account/whoami").await;
    assert_eq!(status, 200, "the device that changed the password stays logged in");
    let (status, _) = server.get_as(&other, "/_matrix/client/v3/account/whoami").await;
    assert_eq!(status, 401, "other devices are logged out");
    let (status, _) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "liam"}, "password": "old"})),
        )
        .await;
    assert_eq!(status, 403, "the old password is gone");

    let kept = server.login("liam", "new").await;
    let (status, body) = with_password(
        &server,
        &main,
        Method::POST,
        "/_matrix/client/v3/account/password",
        json!({"new_password": "newer", "logout_devices": false}),
        "new",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.get_as(&kept, "/_matrix/client/v3/account/whoami").await;
    assert_eq!(status, 200, "logout_devices=false keeps other sessions");
    server.stop().await;
}

#[tokio::test]
async fn deactivation_is_final() {
    let mut server = TestServer::start().await;
    let mia = server.register("mia", "pw").await;
    let (status, body) = with_password(
        &server,
        &mia,
        Method::POST,
        "/_matrix/client/v3/account/deactivate",
        json!({}),
        "pw",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id_server_unbind_result"], "no-support");
    let (status, _) = server.get_as(&mia, "/_matrix/client/v3/account/whoami").await;
    assert_eq!(status, 401);
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "mia"}, "password": "pw"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) =
        server.request(Method::GET, "/_matrix/client/v3/profile/@mia:test.local", None, None).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "mia", "auth": {"type": "m.login.dummy"}})),
        )
        .await;
    assert_error(status, &body, 400, "M_USER_IN_USE");
    server.stop().await;
}

#[tokio::test]
async fn third_party_identifiers_are_not_supported() {
    let mut server = TestServer::start().await;
    let user = server.register("nina", "pw").await;
    let (status, body) = server.get_as(&user, "/_matrix/client/v3/account/3pid").await;
    assert_eq!((status, body), (200, json!({"threepids": []})));
    let (status, body) = server
        .post_as(
            &user,
            "/_matrix/client/v3/account/3pid/add",
            json!({"client_secret": "s3cret", "sid": "1"}),
        )
        .await;
    assert_error(status, &body, 403, "M_THREEPID_AUTH_FAILED");
    let (status, body) = server
        .request(
            Method::POST,
            "/_matrix/client/v3/register/email/requestToken",
            None,
            Some(json!({"client_secret": "s3cret", "email": "a@b.c", "send_attempt": 1})),
        )
        .await;
    assert_error(status, &body, 403, "M_THREEPID_DENIED");
    let (status, body) = server
        .post_as(
            &user,
            "/_matrix/client/v3/account/3pid/email/requestToken",
            json!({"client_secret": "s3cret", "email": "a@b.c", "send_attempt": 1}),
        )
        .await;
    assert_error(status, &body, 400, "M_THREEPID_MEDIUM_NOT_SUPPORTED");
    let (status, body) = server
        .post_as(
            &user,
            "/_matrix/client/v3/account/3pid/delete",
            json!({"medium": "email", "address": "a@b.c"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["id_server_unbind_result"], "no-support");
    server.stop().await;
}

#[tokio::test]
async fn a_device_deletion_session_cannot_delete_another_device() {
    let mut server = TestServer::start().await;
    let phone = server.register("liam", "pw").await;
    let laptop = server.login("liam", "pw").await;
    let tablet = server.login("liam", "pw").await;
    let laptop_path = format!("/_matrix/client/v3/devices/{}", laptop.device_id);
    let tablet_path = format!("/_matrix/client/v3/devices/{}", tablet.device_id);
    let (status, challenge) = server.delete_as(&phone, &laptop_path, json!({})).await;
    assert_eq!(status, 401, "{challenge}");
    let session = challenge["session"].as_str().expect("session");
    // The session was started to delete the laptop: it cannot delete the tablet.
    let (status, body) = server
        .delete_as(&phone, &tablet_path, json!({"auth": password_auth("liam", "pw", session)}))
        .await;
    assert_error(status, &body, 401, "M_FORBIDDEN");
    let (status, _) = server.get_as(&tablet, "/_matrix/client/v3/account/whoami").await;
    assert_eq!(status, 200, "the tablet is still signed in");
    let (status, body) = server
        .delete_as(&phone, &laptop_path, json!({"auth": password_auth("liam", "pw", session)}))
        .await;
    assert_eq!(status, 200, "{body}");

    // The same for a list of devices.
    let watch = server.login("liam", "pw").await;
    let (status, challenge) = server
        .post_as(&phone, "/_matrix/client/v3/delete_devices", json!({"devices": [watch.device_id]}))
        .await;
    assert_eq!(status, 401);
    let session = challenge["session"].as_str().expect("session");
    let (status, body) = server
        .post_as(
            &phone,
            "/_matrix/client/v3/delete_devices",
            json!({"devices": [watch.device_id, tablet.device_id], "auth": password_auth("liam", "pw", session)}),
        )
        .await;
    assert_error(status, &body, 401, "M_FORBIDDEN");
    let (status, _) = server.get_as(&tablet, "/_matrix/client/v3/account/whoami").await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_deleted_device_gets_no_activity_row_back() {
    use tuwunel::storage::users::LAST_SEEN_TABLE;

    let mut server = TestServer::start().await;
    let phone = server.register("mona", "pw").await;
    let old = server.login("mona", "pw").await;
    let services = std::sync::Arc::clone(server.server().services());
    services.accounts.flush_last_seen().await.expect("flush");
    let key = (old.id(), old.device());
    assert!(LAST_SEEN_TABLE.get(services.storage.engine(), &key).expect("read").is_some());
    // The device signs itself out with UIA: each of its requests notes activity first.
    let path = format!("/_matrix/client/v3/devices/{}", old.device_id);
    let (status, body) = with_password(&server, &old, Method::DELETE, &path, json!({}), "pw").await;
    assert_eq!(status, 200, "{body}");
    assert!(LAST_SEEN_TABLE.get(services.storage.engine(), &key).expect("read").is_none());
    // The periodic flush of noted activity must not bring the row back.
    services.accounts.flush_last_seen().await.expect("flush");
    assert!(
        LAST_SEEN_TABLE.get(services.storage.engine(), &key).expect("read").is_none(),
        "the removed device's activity row was re-created"
    );
    let (_, devices) = server.get_as(&phone, "/_matrix/client/v3/devices").await;
    assert_eq!(devices["devices"].as_array().expect("devices").len(), 1);
    drop(services);
    server.stop().await;
}
