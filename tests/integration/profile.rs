//! Profiles: display name, avatar, custom fields and their limits; reading others' profiles.

use reqwest::Method;
use serde_json::json;

use crate::common::{TestServer, assert_error};

#[tokio::test]
async fn displayname_avatar_and_custom_fields() {
    let mut server = TestServer::with_options(&["new_user_displayname_suffix=\"\""]).await;
    let olive = server.register("olive", "pw").await;
    let base = "/_matrix/client/v3/profile/@olive:test.local";

    let (status, body) = server.get_as(&olive, &format!("{base}/displayname")).await;
    assert_eq!((status, body["displayname"].clone()), (200, json!("olive")));
    let (status, _) = server
        .put_as(&olive, &format!("{base}/displayname"), json!({"displayname": "Olive Oyl"}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .put_as(
            &olive,
            &format!("{base}/avatar_url"),
            json!({"avatar_url": "mxc://test.local/abc"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = server
        .put_as(&olive, &format!("{base}/avatar_url"), json!({"avatar_url": "https://evil"}))
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, _) =
        server.put_as(&olive, &format!("{base}/m.tz"), json!({"m.tz": "Europe/Paris"})).await;
    assert_eq!(status, 200);
    let (status, _) = server
        .put_as(
            &olive,
            &format!("{base}/org.example.pet"),
            json!({"org.example.pet": {"name": "Rex"}}),
        )
        .await;
    assert_eq!(status, 200);

    // Anyone (no token needed by default) reads the whole profile.
    let (status, profile) = server.request(Method::GET, base, None, None).await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["displayname"], "Olive Oyl");
    assert_eq!(profile["avatar_url"], "mxc://test.local/abc");
    assert_eq!(profile["m.tz"], "Europe/Paris");
    assert_eq!(profile["org.example.pet"], json!({"name": "Rex"}));
    let (status, body) =
        server.request(Method::GET, &format!("{base}/org.example.pet"), None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"org.example.pet": {"name": "Rex"}}));

    let (status, _) = server.delete_as(&olive, &format!("{base}/org.example.pet"), json!({})).await;
    assert_eq!(status, 200);
    let (status, body) =
        server.request(Method::GET, &format!("{base}/org.example.pet"), None, None).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    server.stop().await;
}

#[tokio::test]
async fn profile_limits_and_permissions() {
    let mut server = TestServer::start().await;
    let pat = server.register("pat", "pw").await;
    let quinn = server.register("quinn", "pw").await;
    let base = "/_matrix/client/v3/profile/@pat:test.local";

    let (status, body) = server
        .put_as(&quinn, &format!("{base}/displayname"), json!({"displayname": "Hijacked"}))
        .await;
    assert_error(status, &body, 403, "M_FORBIDDEN");

    let long_key = format!("org.example.{}", "k".repeat(260));
    let (status, body) =
        server.put_as(&pat, &format!("{base}/{long_key}"), json!({long_key.clone(): "v"})).await;
    assert_error(status, &body, 400, "M_KEY_TOO_LARGE");

    let big = "x".repeat(40 * 1024);
    let (status, _) = server
        .put_as(&pat, &format!("{base}/org.example.one"), json!({"org.example.one": big}))
        .await;
    assert_eq!(status, 200);
    let (status, body) = server
        .put_as(&pat, &format!("{base}/org.example.two"), json!({"org.example.two": big}))
        .await;
    assert_error(status, &body, 400, "M_PROFILE_TOO_LARGE");

    let (status, body) =
        server.put_as(&pat, &format!("{base}/displayname"), json!({"wrong": "shape"})).await;
    assert_error(status, &body, 400, "M_BAD_JSON");

    let (status, body) = server
        .request(Method::GET, "/_matrix/client/v3/profile/@ghost:test.local", None, None)
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) = server
        .request(Method::GET, "/_matrix/client/v3/profile/@someone:elsewhere.org", None, None)
        .await;
    // Asked of that server, which cannot be reached (see federation.rs for one that can).
    assert_error(status, &body, 502, "M_UNKNOWN");
    server.stop().await;

    let mut private = TestServer::with_options(&["require_auth_for_profile_requests=true"]).await;
    let user = private.register("rose", "pw").await;
    let (status, body) = private
        .request(Method::GET, "/_matrix/client/v3/profile/@rose:test.local", None, None)
        .await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");
    let (status, _) = private.get_as(&user, "/_matrix/client/v3/profile/@rose:test.local").await;
    assert_eq!(status, 200);
    private.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_cannot_take_a_profile_past_its_limit_together() {
    let mut server = TestServer::start().await;
    let sam = server.register("sam", "pw").await;
    let base = server.url("/_matrix/client/v3/profile/@sam:test.local");
    // Each field alone fits; any four together do not.
    let big = "x".repeat(20 * 1024);
    let mut updates = tokio::task::JoinSet::new();
    for field in 0..12 {
        let client = server.client.clone();
        let url = format!("{base}/org.example.f{field}");
        let body = json!({format!("org.example.f{field}"): big});
        let token = sam.token.clone();
        updates.spawn(async move {
            let response =
                client.put(url).bearer_auth(token).json(&body).send().await.expect("request");
            response.status().as_u16()
        });
    }
    let mut accepted = 0;
    while let Some(status) = updates.join_next().await {
        match status.expect("task") {
            200 => accepted += 1,
            400 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    let (status, profile) = server.get_as(&sam, "/_matrix/client/v3/profile/@sam:test.local").await;
    assert_eq!(status, 200);
    let size = serde_json::to_vec(&profile).expect("json").len();
    assert!(size <= 64 * 1024, "{accepted} updates were accepted; the profile is {size} bytes");
    assert_eq!(accepted, 3);
    server.stop().await;
}

/// A profile change is carried to each joined room by a member event computed from the join
/// the room had when the change was made. If the user leaves (or is kicked) meanwhile, that
/// event must not join them again: the room's actor sends it only while they are joined.
#[tokio::test]
async fn a_profile_update_computed_before_a_leave_does_not_join_again() {
    use tuwunel::rooms::builder::Template;

    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let (status, body) = server
        .post_as(&alice, "/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let room = body["room_id"].as_str().expect("room_id").to_owned();
    let (status, body) =
        server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/join"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    // The update as it was prepared while bob was joined...
    let bob_id = ruma::OwnedUserId::try_from(bob.user_id.as_str()).expect("user id");
    let mut content = ruma::CanonicalJsonObject::new();
    content.insert("membership".to_owned(), ruma::CanonicalJsonValue::String("join".to_owned()));
    content.insert("displayname".to_owned(), ruma::CanonicalJsonValue::String("Bobby".to_owned()));
    let update = |only_while_joined: bool| {
        let mut template = Template::state(
            ruma::events::TimelineEventType::RoomMember,
            bob_id.as_str(),
            &bob_id,
            content.clone(),
        );
        template.only_while_joined = only_while_joined;
        template
    };
    // ...arrives after he left.
    let (status, body) =
        server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/leave"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let room_id = ruma::OwnedRoomId::try_from(room.as_str()).expect("room id");
    let services = server.server().services();
    let refused = services.rooms.send(&room_id, update(true), None).await;
    assert!(refused.is_err(), "the update must not be sent after the leave");
    let (status, body) = server.get_as(&bob, "/_matrix/client/v3/joined_rooms").await;
    assert_eq!(status, 200);
    assert_eq!(body["joined_rooms"], json!([]), "bob is not joined again");
    // Sent as any member event, the same update would have joined him again.
    services.rooms.send(&room_id, update(false), None).await.expect("a plain join is allowed here");
    let (_, body) = server.get_as(&bob, "/_matrix/client/v3/joined_rooms").await;
    assert_eq!(body["joined_rooms"], json!([room]));
}
