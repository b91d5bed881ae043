//! Account data, room tags, filters, capabilities and the user directory.

use serde_json::json;

use crate::common::{TestServer, assert_error};

#[tokio::test]
async fn global_and_room_account_data() {
    let mut server = TestServer::start().await;
    let sam = server.register("sam", "pw").await;
    let tess = server.register("tess", "pw").await;
    let global = "/_matrix/client/v3/user/@sam:test.local/account_data/org.example.settings";
    let room = "/_matrix/client/v3/user/@sam:test.local/rooms/!room:test.local/account_data/org.example.room";

    let (status, body) = server.get_as(&sam, global).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, _) = server.put_as(&sam, global, json!({"theme": "dark"})).await;
    assert_eq!(status, 200);
    let (status, body) = server.get_as(&sam, global).await;
    assert_eq!((status, body), (200, json!({"theme": "dark"})));
    let (status, _) = server.put_as(&sam, global, json!({"theme": "light"})).await;
    assert_eq!(status, 200);
    assert_eq!(server.get_as(&sam, global).await.1, json!({"theme": "light"}));

    let (status, _) = server.put_as(&sam, room, json!({"pinned": true})).await;
    assert_eq!(status, 200);
    assert_eq!(server.get_as(&sam, room).await.1, json!({"pinned": true}));

    let (status, body) = server.put_as(&tess, global, json!({"theme": "mine"})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) = server.get_as(&tess, global).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");

    for kind in ["m.fully_read", "m.push_rules"] {
        let path = format!("/_matrix/client/v3/user/@sam:test.local/account_data/{kind}");
        let (status, body) = server.put_as(&sam, &path, json!({})).await;
        assert_error(status, &body, 405, "M_BAD_JSON");
    }
    let (status, body) = server.put_as(&sam, global, json!([1, 2])).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let (status, body) = server
        .put_as(&sam, "/_matrix/client/v3/user/@sam:test.local/rooms/not-a-room/account_data/org.example.room", json!({}))
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");

    // Changes are recorded on the account data stream, one entry per key.
    server.restart().await;
    let services = server.server().services();
    let stream = tuwunel::storage::account_data::ACCOUNT_DATA_STREAM_TABLE
        .collect(
            services.storage.engine(),
            &tuwunel::storage::codec::Prefix::of(
                &ruma::OwnedUserId::try_from("@sam:test.local").expect("id"),
            ),
            tuwunel::storage::Direction::Forward,
            100,
        )
        .expect("stream");
    let kinds: Vec<String> =
        stream.iter().map(|(_, tuwunel::storage::codec::Json((_, kind)))| kind.clone()).collect();
    assert_eq!(
        kinds,
        ["org.example.settings", "org.example.room"],
        "superseded changes leave the stream"
    );
    assert!(stream[0].0.1 < stream[1].0.1);
    server.stop().await;
}

#[tokio::test]
async fn room_tags() {
    let mut server = TestServer::start().await;
    let uma = server.register("uma", "pw").await;
    let base = "/_matrix/client/v3/user/@uma:test.local/rooms/!r:test.local/tags";
    assert_eq!(server.get_as(&uma, base).await.1, json!({"tags": {}}));
    let (status, _) =
        server.put_as(&uma, &format!("{base}/m.favourite"), json!({"order": 0.25})).await;
    assert_eq!(status, 200);
    let (status, _) = server.put_as(&uma, &format!("{base}/u.work"), json!({})).await;
    assert_eq!(status, 200);
    let (_, body) = server.get_as(&uma, base).await;
    assert_eq!(body["tags"]["m.favourite"]["order"], 0.25);
    assert!(body["tags"]["u.work"].is_object());
    let (status, _) = server.delete_as(&uma, &format!("{base}/u.work"), json!({})).await;
    assert_eq!(status, 200);
    let (_, body) = server.get_as(&uma, base).await;
    assert!(body["tags"].get("u.work").is_none());
    let (status, body) = server.put_as(&uma, &format!("{base}/u.bad"), json!({"order": 3})).await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    // Tags are the m.tag room account data.
    let (_, data) = server
        .get_as(
            &uma,
            "/_matrix/client/v3/user/@uma:test.local/rooms/!r:test.local/account_data/m.tag",
        )
        .await;
    assert_eq!(data["tags"]["m.favourite"]["order"], 0.25);
    server.stop().await;
}

#[tokio::test]
async fn filters_are_stored_and_validated() {
    let mut server = TestServer::start().await;
    let vic = server.register("vic", "pw").await;
    let path = "/_matrix/client/v3/user/@vic:test.local/filter";
    let filter = json!({"room": {"timeline": {"limit": 10, "types": ["m.room.message"]}, "state": {"lazy_load_members": true}}});
    let (status, body) = server.post_as(&vic, path, filter.clone()).await;
    assert_eq!(status, 200, "{body}");
    let filter_id = body["filter_id"].as_str().expect("id").to_owned();
    let (_, again) = server.post_as(&vic, path, filter).await;
    assert_eq!(again["filter_id"], filter_id.as_str(), "the same filter gets the same id");

    let (status, stored) = server.get_as(&vic, &format!("{path}/{filter_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(stored["room"]["timeline"]["limit"], 10);
    assert_eq!(stored["room"]["state"]["lazy_load_members"], true);

    let (status, body) = server.get_as(&vic, &format!("{path}/nope")).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, body) =
        server.post_as(&vic, path, json!({"room": {"timeline": {"limit": "ten"}}})).await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    let (status, body) =
        server.post_as(&vic, path, json!({"room": {"timeline": {"limit": 0}}})).await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let walt = server.register("walt", "pw").await;
    let (status, body) = server.get_as(&walt, &format!("{path}/{filter_id}")).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    server.stop().await;
}

#[tokio::test]
async fn capabilities_describe_the_server() {
    let mut server = TestServer::with_options(&["default_room_version=\"11\""]).await;
    let user = server.register("xena", "pw").await;
    let (status, body) = server.get_as(&user, "/_matrix/client/v3/capabilities").await;
    assert_eq!(status, 200, "{body}");
    let capabilities = &body["capabilities"];
    // A capability left out means its spec default; m.change_password defaults to enabled.
    assert!(capabilities.get("m.change_password").is_none_or(|c| c["enabled"] == true), "{body}");
    assert_eq!(capabilities["m.room_versions"]["default"], "11");
    for version in ["10", "11", "12"] {
        assert_eq!(capabilities["m.room_versions"]["available"][version], "stable");
    }
    assert_eq!(capabilities["m.3pid_changes"]["enabled"], false);
    assert_eq!(capabilities["m.get_login_token"]["enabled"], true);
    assert_eq!(capabilities["m.profile_fields"]["enabled"], true);
    server.stop().await;
}

#[tokio::test]
async fn user_directory_search() {
    let mut server = TestServer::with_options(&["user_directory_search_all_users=true"]).await;
    let yara = server.register("yara", "pw").await;
    server.register("zed", "pw").await;
    let gone = server.register("yannick", "pw").await;
    server
        .put_as(
            &yara,
            "/_matrix/client/v3/profile/@yara:test.local/displayname",
            json!({"displayname": "Yara Zedd"}),
        )
        .await;
    tuwunel::admin::execute(server.server().services(), "users deactivate yannick")
        .await
        .expect("deactivate");
    let _ = gone;

    let (status, body) = server
        .post_as(&yara, "/_matrix/client/v3/user_directory/search", json!({"search_term": "zed"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let found: Vec<&str> = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["user_id"].as_str())
        .collect();
    assert_eq!(found, ["@yara:test.local", "@zed:test.local"], "matches ids and display names");
    let (_, body) = server
        .post_as(
            &yara,
            "/_matrix/client/v3/user_directory/search",
            json!({"search_term": "zed", "limit": 1}),
        )
        .await;
    assert_eq!(body["results"].as_array().expect("results").len(), 1);
    assert_eq!(body["limited"], true);
    let (_, body) = server
        .post_as(
            &yara,
            "/_matrix/client/v3/user_directory/search",
            json!({"search_term": "yannick"}),
        )
        .await;
    assert_eq!(body["results"], json!([]), "deactivated users are hidden");
    server.stop().await;

    // Without search_all_users, users who share no room with the searcher stay hidden.
    let mut server = TestServer::start().await;
    let alone = server.register("alone", "pw").await;
    server.register("hidden", "pw").await;
    let (_, body) = server
        .post_as(
            &alone,
            "/_matrix/client/v3/user_directory/search",
            json!({"search_term": "hidden"}),
        )
        .await;
    assert_eq!(body["results"], json!([]));
    server.stop().await;
}
