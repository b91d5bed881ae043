//! The admin room: created at first start, joined by admins, running `!admin` commands; and
//! the room side effects of account changes (profile propagation, deactivation).

use serde_json::{Value, json};

use crate::{
    common::{TestServer, User, assert_error, wait_until},
    rooms::{create_room, send_text},
};

async fn admin_room(server: &TestServer, user: &User) -> String {
    let (status, body) =
        server.get_as(user, "/_matrix/client/v3/directory/room/%23admins:test.local").await;
    if status == 200 {
        return body["room_id"].as_str().expect("room id").to_owned();
    }
    // Without the alias endpoint, find it among the joined rooms by its canonical alias.
    let (_, rooms) = server.get_as(user, "/_matrix/client/v3/joined_rooms").await;
    for room in rooms["joined_rooms"].as_array().expect("rooms") {
        let room = room.as_str().expect("id");
        let (status, alias) = server
            .get_as(user, &format!("/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias"))
            .await;
        if status == 200 && alias["alias"] == "#admins:test.local" {
            return room.to_owned();
        }
    }
    panic!("no admin room found for {}", user.user_id);
}

async fn notices(server: &TestServer, user: &User, room: &str) -> Vec<String> {
    let (_, page) = server
        .get_as(user, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"))
        .await;
    page["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter(|event| {
            event["sender"] == "@conduit:test.local" && event["content"]["msgtype"] == "m.notice"
        })
        .filter_map(|event| event["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn the_first_user_runs_admin_commands_in_the_admin_room() {
    let mut server = TestServer::start().await;
    let admin = server.register("boss", "pw").await;
    let room = admin_room(&server, &admin).await;
    let (_, levels) = server
        .get_as(&admin, &format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels"))
        .await;
    assert_eq!(levels["users"]["@boss:test.local"], 100);
    let (_, name) =
        server.get_as(&admin, &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name")).await;
    assert_eq!(name["name"], "test.local Admin Room");

    send_text(&server, &admin, &room, "cmd1", "!admin server uptime").await;
    let answered = wait_until(std::time::Duration::from_secs(10), || {
        let server = &server;
        let admin = &admin;
        let room = room.clone();
        async move { notices(server, admin, &room).await.iter().any(|body| body.starts_with("Up ")) }
    })
    .await;
    assert!(answered, "no answer to !admin server uptime");

    send_text(&server, &admin, &room, "cmd2", "!admin users list-users").await;
    let listed = wait_until(std::time::Duration::from_secs(10), || {
        let server = &server;
        let admin = &admin;
        let room = room.clone();
        async move {
            notices(server, admin, &room)
                .await
                .iter()
                .any(|body| body.contains("@boss:test.local (admin)"))
        }
    })
    .await;
    assert!(listed);

    // A second user is not an admin and cannot enter; making them admin brings them in.
    let helper = server.register("helper", "pw").await;
    let (status, body) =
        server.post_as(&helper, &format!("/_matrix/client/v3/rooms/{room}/join"), json!({})).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    send_text(&server, &admin, &room, "cmd3", "!admin users make-user-admin helper").await;
    let joined = wait_until(std::time::Duration::from_secs(10), || {
        let server = &server;
        let helper = &helper;
        let room = room.clone();
        async move {
            let (_, rooms) = server.get_as(helper, "/_matrix/client/v3/joined_rooms").await;
            rooms["joined_rooms"]
                .as_array()
                .is_some_and(|rooms| rooms.iter().any(|r| r == room.as_str()))
        }
    })
    .await;
    assert!(joined, "the new admin was not joined to the admin room");
    tuwunel::admin::execute(server.server().services(), "users revoke-admin helper")
        .await
        .expect("revoke");
    let (_, rooms) = server.get_as(&helper, "/_matrix/client/v3/joined_rooms").await;
    assert!(!rooms["joined_rooms"].as_array().expect("rooms").iter().any(|r| r == room.as_str()));

    let memory = tuwunel::admin::execute(server.server().services(), "server memory-usage")
        .await
        .expect("memory-usage");
    assert!(memory.contains("| pdus |"), "{memory}");
    assert!(memory.contains("Block cache: ") && memory.contains("Memtables: "), "{memory}");
    // The caches beside the database, with the modifier that scales them; this user's
    // memberships were read by the room joins above.
    assert!(memory.contains("`cache_capacity_modifier` 1)"), "{memory}");
    // The number in column `column` (1 is the first after the row's name) of the table row
    // that starts with `row`.
    let number = |row: &str, column: usize| {
        memory
            .lines()
            .find(|line| line.starts_with(row))
            .and_then(|line| line.split('|').nth(column + 1))
            .and_then(|number| number.trim().parse::<u64>().ok())
    };
    let first_number = |row: &str| number(row, 1);
    assert!(first_number("| memberships (users) |").is_some_and(|count| count > 0), "{memory}");
    // Caches bounded by memory give their estimate; those bounded by keys do not.
    assert!(number("| state snapshots |", 2).is_some_and(|bytes| bytes > 0), "{memory}");
    assert!(number("| memberships (users) |", 2).is_none(), "{memory}");
    assert!(memory.contains("| ignore lists (users) |"), "{memory}");
    // jemalloc serves every allocation, in the test process as in the binary.
    assert!(first_number("| jemalloc |").is_some_and(|bytes| bytes > 0), "{memory}");
    assert!(!memory.contains("| glibc |"), "{memory}");
    server.stop().await;
}

#[tokio::test]
async fn a_retried_send_runs_its_admin_command_once() {
    let mut server = TestServer::start().await;
    let admin = server.register("boss", "pw").await;
    let room = admin_room(&server, &admin).await;
    // A client retrying a send (same transaction id) gets the first answer back; the command
    // must not run again.
    let first = send_text(&server, &admin, &room, "retried", "!admin debug echo once").await;
    let again = send_text(&server, &admin, &room, "retried", "!admin debug echo once").await;
    assert_eq!(first, again, "the retry is answered with the first event");
    send_text(&server, &admin, &room, "last", "!admin debug echo end").await;
    // Both answers are in once each command has run (in either order).
    let answered = wait_until(std::time::Duration::from_secs(10), || {
        let server = &server;
        let admin = &admin;
        let room = room.clone();
        async move {
            let notices = notices(server, admin, &room).await;
            notices.iter().any(|body| body == "end") && notices.iter().any(|body| body == "once")
        }
    })
    .await;
    assert!(answered, "no answer to the commands");
    let answers = notices(&server, &admin, &room).await;
    assert_eq!(answers.iter().filter(|body| *body == "once").count(), 1, "{answers:?}");
    // Messages that are not commands, and commands from the server user itself, run nothing.
    send_text(&server, &admin, &room, "chat", "admin: not a command").await;
    let (status, _) = server
        .put_as(
            &admin,
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.message/x"),
            json!({"msgtype": "m.text", "body": "!admin debug echo state"}),
        )
        .await;
    assert_eq!(status, 200);
    send_text(&server, &admin, &room, "final", "!admin debug echo final").await;
    let answered = wait_until(std::time::Duration::from_secs(10), || {
        let server = &server;
        let admin = &admin;
        let room = room.clone();
        async move { notices(server, admin, &room).await.iter().any(|body| body == "final") }
    })
    .await;
    assert!(answered, "no answer to the last command");
    let answers = notices(&server, &admin, &room).await;
    assert!(
        !answers.iter().any(|body| body == "state"),
        "a state event ran a command: {answers:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn profile_changes_reach_member_events_and_deactivation_leaves_rooms() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let first = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    let second = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    for room in [&first, &second] {
        server.post_as(&bob, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    }
    let (status, _) = server
        .put_as(
            &bob,
            "/_matrix/client/v3/profile/@bob:test.local/displayname",
            json!({"displayname": "Robert"}),
        )
        .await;
    assert_eq!(status, 200);
    server
        .put_as(
            &bob,
            "/_matrix/client/v3/profile/@bob:test.local/avatar_url",
            json!({"avatar_url": "mxc://test.local/bob"}),
        )
        .await;
    for room in [&first, &second] {
        let (_, member) = server
            .get_as(
                &alice,
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/@bob:test.local"),
            )
            .await;
        assert_eq!(member["displayname"], "Robert", "{member}");
        assert_eq!(member["avatar_url"], "mxc://test.local/bob");
        assert_eq!(member["membership"], "join");
    }

    tuwunel::admin::execute(server.server().services(), "users deactivate bob")
        .await
        .expect("deactivate");
    for room in [&first, &second] {
        let (_, member) = server
            .get_as(
                &alice,
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/@bob:test.local"),
            )
            .await;
        assert_eq!(member["membership"], "leave", "deactivated users leave their rooms");
    }
    send_text(&server, &alice, &first, "x", "still works").await;
    server.stop().await;
}

#[tokio::test]
async fn the_user_directory_finds_people_in_shared_and_published_rooms() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    server.register("hermit", "pw").await;
    let search = |user: &User, term: &str| {
        let server = &server;
        let user = user.clone();
        let term = term.to_owned();
        async move {
            let (_, body) = server
                .post_as(
                    &user,
                    "/_matrix/client/v3/user_directory/search",
                    json!({"search_term": term}),
                )
                .await;
            body["results"]
                .as_array()
                .expect("results")
                .iter()
                .filter_map(|r| r["user_id"].as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        }
    };
    assert!(search(&alice, "bob").await.is_empty(), "no shared room yet");
    let room = create_room(&server, &alice, json!({})).await;
    server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            json!({"user_id": bob.user_id}),
        )
        .await;
    server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/join"), json!({})).await;
    assert_eq!(search(&alice, "bob").await, ["@bob:test.local"]);
    assert!(search(&alice, "hermit").await.is_empty());
    let published =
        create_room(&server, &bob, json!({"visibility": "public", "preset": "public_chat"})).await;
    let hermit = server.login("hermit", "pw").await;
    server.post_as(&hermit, &format!("/_matrix/client/v3/join/{published}"), json!({})).await;
    assert_eq!(
        search(&alice, "hermit").await,
        ["@hermit:test.local"],
        "members of published rooms are findable"
    );
    let _: Value = json!(null);
    server.stop().await;
}

#[tokio::test]
async fn reports_are_stored_for_admins() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    let event = send_text(&server, &alice, &room, "r", "offensive").await;
    let (status, body) = server
        .post_as(
            &bob,
            &format!("/_matrix/client/v3/rooms/{room}/report/{event}"),
            json!({"reason": "rude"}),
        )
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    server.post_as(&bob, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    let (status, _) = server
        .post_as(
            &bob,
            &format!("/_matrix/client/v3/rooms/{room}/report/{event}"),
            json!({"reason": "rude"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = server
        .post_as(
            &bob,
            &format!("/_matrix/client/v3/rooms/{room}/report"),
            json!({"reason": "whole room"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = server
        .post_as(&bob, "/_matrix/client/v3/rooms/!nope:test.local/report", json!({"reason": "x"}))
        .await;
    assert_error(status, &body, 404, "M_NOT_FOUND");
    let (status, _) = server
        .post_as(
            &bob,
            "/_matrix/client/v3/users/@alice:test.local/report",
            json!({"reason": "troll"}),
        )
        .await;
    assert_eq!(status, 200);
    let listing = tuwunel::admin::execute(server.server().services(), "rooms list-reports")
        .await
        .expect("list");
    assert!(
        listing.contains("rude") && listing.contains("whole room") && listing.contains("troll"),
        "{listing}"
    );
    assert!(listing.contains(&event), "{listing}");
    server.stop().await;
}
