//! Simplified sliding sync (MSC4186) over HTTP: the room list's order, windows and counts,
//! connections and `pos` (retries, expiry, `M_UNKNOWN_POS`), long polls, and bad input.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{
    common::{TestServer, User, assert_error},
    rooms::{create_room, send_text},
};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
/// Options for quick long polls in tests.
const QUICK: &[&str] = &["client_sync_timeout_max=20000"];

/// One request; `query` is appended to the path (`?pos=..&timeout=..`).
async fn sliding(server: &TestServer, user: &User, query: &str, body: Value) -> (u16, Value) {
    server.post_as(user, &format!("{PATH}{query}"), body).await
}

/// One request that must succeed.
async fn ok(server: &TestServer, user: &User, query: &str, body: Value) -> Value {
    let (status, body) = sliding(server, user, query, body).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn all_rooms(end: u64) -> Value {
    json!({ "lists": { "all": { "ranges": [[0, end]], "timeline_limit": 1 } } })
}

fn pos_of(body: &Value) -> String {
    body["pos"].as_str().expect("a pos").to_owned()
}

/// The rooms of a response, newest bump stamp first.
fn by_bump(body: &Value) -> Vec<String> {
    let mut rooms: Vec<(u64, String)> = body["rooms"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(room, value)| (value["bump_stamp"].as_u64().unwrap_or(0), room.clone()))
        .collect();
    rooms.sort_by(|a, b| b.cmp(a));
    rooms.into_iter().map(|(_, room)| room).collect()
}

fn room_ids(body: &Value) -> Vec<String> {
    let mut rooms: Vec<String> =
        body["rooms"].as_object().into_iter().flatten().map(|(room, _)| room.clone()).collect();
    rooms.sort();
    rooms
}

#[tokio::test]
async fn the_list_is_ordered_by_recency_and_windows_follow_the_ranges() {
    let server = TestServer::with_options(QUICK).await;
    // The first user is joined to the admin room: let someone else be first.
    server.register("admin", "pw").await;
    let alice = server.register("alice", "pw").await;
    let mut rooms = Vec::new();
    for index in 0..5 {
        let room = create_room(&server, &alice, json!({})).await;
        send_text(&server, &alice, &room, &format!("t{index}"), "hello").await;
        rooms.push(room);
    }
    let newest_first: Vec<String> = rooms.iter().rev().cloned().collect();

    let everything = ok(&server, &alice, "", all_rooms(9)).await;
    assert_eq!(everything["lists"]["all"]["count"], 5, "{everything}");
    assert_eq!(by_bump(&everything), newest_first, "{everything}");
    for room in &rooms {
        assert_eq!(everything["rooms"][room]["initial"], true, "{everything}");
    }

    let (_, body) = sliding(&server, &alice, "", all_rooms(1)).await;
    assert_eq!(body["lists"]["all"]["count"], 5, "{body}");
    let mut two_newest = newest_first[..2].to_vec();
    two_newest.sort();
    assert_eq!(room_ids(&body), two_newest, "{body}");

    // A message in the oldest room puts it at the top: the next response's window has it.
    let pos = pos_of(&body);
    send_text(&server, &alice, &rooms[0], "late", "back on top").await;
    let next = ok(&server, &alice, &format!("?pos={pos}"), all_rooms(1)).await;
    assert_eq!(next["rooms"][&rooms[0]]["initial"], true, "{next}");
    assert!(next["rooms"].get(&rooms[3]).is_none(), "R3 fell out of the window: {next}");
    let bump = next["rooms"][&rooms[0]]["bump_stamp"].as_u64().expect("a bump stamp");
    let top = everything["rooms"][&rooms[4]]["bump_stamp"].as_u64().expect("as the test set it up");
    assert!(bump > top, "{next}");
}

#[tokio::test]
async fn a_request_without_timeout_answers_at_once_and_a_long_poll_wakes_on_news() {
    let server = TestServer::with_options(QUICK).await;
    // The first user is joined to the admin room: let someone else be first.
    server.register("admin", "pw").await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&server, &alice, json!({})).await;
    let first = ok(&server, &alice, "", all_rooms(9)).await;

    // Nothing new and no timeout: the answer comes at once, with nothing in it.
    let started = Instant::now();
    let quiet = ok(&server, &alice, &format!("?pos={}", pos_of(&first)), all_rooms(9)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(quiet.get("rooms").is_none(), "{quiet}");

    // A long poll wakes on a message.
    let url = server.url(&format!("{PATH}?pos={}&timeout=15000", pos_of(&quiet)));
    let poll = {
        let (client, token) = (server.client.clone(), alice.token.clone());
        let url = url.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let body: Value = client
                .post(url)
                .bearer_auth(token)
                .json(&all_rooms(9))
                .send()
                .await
                .expect("as the test set it up")
                .json()
                .await
                .expect("as the test set it up");
            (started.elapsed(), body)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    send_text(&server, &alice, &room, "t1", "wake up").await;
    let (waited, woken) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("as the test set it up")
        .expect("as the test set it up");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert!(woken["rooms"].get(&room).is_some(), "{woken}");

    // And on an invite.
    let other = create_room(&server, &bob, json!({})).await;
    let url = server.url(&format!("{PATH}?pos={}&timeout=15000", pos_of(&woken)));
    let poll = {
        let (client, token) = (server.client.clone(), alice.token.clone());
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&all_rooms(9))
                .send()
                .await
                .expect("as the test set it up")
                .json::<Value>()
                .await
                .expect("as the test set it up")
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = server
        .post_as(
            &bob,
            &format!("/_matrix/client/v3/rooms/{other}/invite"),
            json!({ "user_id": alice.user_id }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let invited = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("as the test set it up")
        .expect("as the test set it up");
    assert_eq!(invited["rooms"][&other]["initial"], true, "{invited}");
    assert_eq!(invited["lists"]["all"]["count"], 2, "{invited}");
}

#[tokio::test]
async fn kicked_and_banned_rooms_are_listed_and_rooms_left_only_carry_their_leave() {
    let server = TestServer::with_options(QUICK).await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let join = |room: String| {
        let (server, bob) = (&server, &bob);
        async move {
            let (status, body) =
                server.post_as(bob, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
            assert_eq!(status, 200, "{body}");
        }
    };
    let public = json!({ "preset": "public_chat" });
    let kicked = create_room(&server, &alice, public.clone()).await;
    let banned = create_room(&server, &alice, public.clone()).await;
    let left = create_room(&server, &alice, public.clone()).await;
    let banned_before_joining = create_room(&server, &alice, public.clone()).await;
    for room in [&kicked, &banned, &left] {
        join(room.clone()).await;
    }
    let first = ok(&server, &bob, "", all_rooms(9)).await;
    assert_eq!(first["lists"]["all"]["count"], 3, "{first}");

    let moderate = |action: &'static str, room: String| {
        let (server, alice, bob) = (&server, &alice, &bob);
        async move {
            let (status, body) = server
                .post_as(
                    alice,
                    &format!("/_matrix/client/v3/rooms/{room}/{action}"),
                    json!({ "user_id": bob.user_id }),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    moderate("kick", kicked.clone()).await;
    moderate("ban", banned.clone()).await;
    moderate("ban", banned_before_joining.clone()).await;
    let (status, body) =
        server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{left}/leave"), json!({})).await;
    assert_eq!(status, 200, "{body}");

    // The leave reaches the connection that had the room, once.
    let next = ok(&server, &bob, &format!("?pos={}", pos_of(&first)), all_rooms(9)).await;
    assert_eq!(next["lists"]["all"]["count"], 3, "{next}");
    for room in [&kicked, &banned, &left] {
        assert!(next["rooms"].get(room).is_some(), "{room} in {next}");
    }
    assert!(next["rooms"].get(&banned_before_joining).is_none(), "{next}");
    let after = ok(&server, &bob, &format!("?pos={}", pos_of(&next)), all_rooms(9)).await;
    assert_eq!(after["lists"]["all"]["count"], 2, "the room left is gone: {after}");

    // A new connection lists the kick and the ban, never the room left.
    let fresh = ok(&server, &bob, "", all_rooms(9)).await;
    assert_eq!(
        room_ids(&fresh),
        {
            let mut rooms = vec![kicked.clone(), banned.clone()];
            rooms.sort();
            rooms
        },
        "{fresh}"
    );
}

#[tokio::test]
async fn unknown_and_expired_positions_answer_m_unknown_pos() {
    let (server, clock) = TestServer::with_clock(&["sliding_sync_connection_timeout_s=600"]).await;
    let alice = server.register("alice", "pw").await;
    for pos in ["nonsense", "1.1", "12345678.0"] {
        let (status, body) = sliding(&server, &alice, &format!("?pos={pos}"), all_rooms(9)).await;
        assert_error(status, &body, 400, "M_UNKNOWN_POS");
    }
    let first = ok(&server, &alice, "", all_rooms(9)).await;
    // Another user cannot continue it.
    let bob = server.register("bob", "pw").await;
    let (status, body) =
        sliding(&server, &bob, &format!("?pos={}", pos_of(&first)), all_rooms(9)).await;
    assert_error(status, &body, 400, "M_UNKNOWN_POS");

    clock.advance(Duration::from_secs(599));
    let second = ok(&server, &alice, &format!("?pos={}", pos_of(&first)), all_rooms(9)).await;
    clock.advance(Duration::from_secs(600));
    let (status, body) =
        sliding(&server, &alice, &format!("?pos={}", pos_of(&second)), all_rooms(9)).await;
    assert_error(status, &body, 400, "M_UNKNOWN_POS");
    // Starting again works.
    ok(&server, &alice, "", all_rooms(9)).await;
}

#[tokio::test]
async fn a_resent_request_with_a_bigger_range_gets_the_new_rooms() {
    let server = TestServer::with_options(QUICK).await;
    let alice = server.register("alice", "pw").await;
    let mut rooms = Vec::new();
    for _ in 0..4 {
        rooms.push(create_room(&server, &alice, json!({})).await);
    }
    let first = ok(&server, &alice, "", all_rooms(1)).await;
    let pos = pos_of(&first);
    let narrow = ok(&server, &alice, &format!("?pos={pos}"), all_rooms(1)).await;
    assert!(narrow.get("rooms").is_none(), "{narrow}");
    // The client cancels and sends the same pos with a bigger window: what the first attempt
    // answered was never confirmed, so the two older rooms come now.
    let wide = ok(&server, &alice, &format!("?pos={pos}"), all_rooms(3)).await;
    let mut oldest = rooms[..2].to_vec();
    oldest.sort();
    assert_eq!(room_ids(&wide), oldest, "{wide}");
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_spec_errors_and_change_nothing() {
    let server = TestServer::with_options(QUICK).await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({})).await;
    let first = ok(&server, &alice, "", all_rooms(0)).await;
    let pos = pos_of(&first);
    send_text(&server, &alice, &room, "t1", "news").await;
    let committed = server.server().services().storage.writer().committed_position();

    let many_lists: serde_json::Map<String, Value> = (0..101)
        .map(|index| (format!("l{index}"), json!({ "ranges": [[0, 1]], "timeline_limit": 1 })))
        .collect();
    let cases: Vec<(&str, String, Value, u16, &str)> = vec![
        (
            "a wrong type",
            format!("?pos={pos}"),
            json!({ "lists": { "all": { "ranges": "all" } } }),
            400,
            "M_BAD_JSON",
        ),
        (
            "a timeout that is no number",
            format!("?pos={pos}&timeout=soon"),
            all_rooms(0),
            400,
            "M_INVALID_PARAM",
        ),
        (
            "an unknown set_presence",
            format!("?pos={pos}&set_presence=busy"),
            all_rooms(0),
            400,
            "M_INVALID_PARAM",
        ),
        (
            "too many lists",
            format!("?pos={pos}"),
            json!({ "lists": many_lists }),
            400,
            "M_INVALID_PARAM",
        ),
        (
            "a backwards range",
            format!("?pos={pos}"),
            json!({ "lists": { "all": { "ranges": [[3, 1]], "timeline_limit": 1 } } }),
            400,
            "M_INVALID_PARAM",
        ),
        (
            "a long conn_id",
            format!("?pos={pos}"),
            json!({ "conn_id": "c".repeat(65) }),
            400,
            "M_INVALID_PARAM",
        ),
        (
            "a bad room id",
            format!("?pos={pos}"),
            json!({ "room_subscriptions": { "room": { "timeline_limit": 1 } } }),
            400,
            "M_BAD_JSON",
        ),
        (
            "a to-device since of another server",
            format!("?pos={pos}"),
            json!({ "extensions": { "to_device": { "enabled": true, "since": "s1_2" } } }),
            400,
            "M_INVALID_PARAM",
        ),
    ];
    for (what, query, body, status, errcode) in cases {
        let (got, answer) = sliding(&server, &alice, &query, body).await;
        assert_eq!(got, status, "{what}: {answer}");
        assert_eq!(answer["errcode"], errcode, "{what}: {answer}");
    }
    let (status, body) =
        server.request(reqwest::Method::POST, PATH, None, Some(all_rooms(0))).await;
    assert_error(status, &body, 401, "M_MISSING_TOKEN");

    // Nothing was stored, and the connection still continues from `pos` with the news.
    assert_eq!(server.server().services().storage.writer().committed_position(), committed);
    let next = ok(&server, &alice, &format!("?pos={pos}"), all_rooms(0)).await;
    assert!(next["rooms"].get(&room).is_some(), "{next}");
}

#[tokio::test]
async fn subscriptions_show_rooms_outside_the_window_and_ignore_strangers_rooms() {
    let server = TestServer::with_options(QUICK).await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let old = create_room(&server, &alice, json!({})).await;
    let _new = create_room(&server, &alice, json!({})).await;
    let strangers = create_room(&server, &bob, json!({})).await;
    let body = json!({
        "lists": { "all": { "ranges": [[0, 0]], "timeline_limit": 1 } },
        "room_subscriptions": {
            old.clone(): { "timeline_limit": 5 },
            strangers.clone(): { "timeline_limit": 5 },
            "!unknown:localhost": { "timeline_limit": 5 },
        },
    });
    let response = ok(&server, &alice, "", body).await;
    assert_eq!(response["rooms"][&old]["initial"], true, "{response}");
    assert!(response["rooms"].get(&strangers).is_none(), "{response}");
    assert!(response["rooms"].get("!unknown:localhost").is_none(), "{response}");
    assert_eq!(
        response["rooms"].as_object().expect("as the test set it up").len(),
        2,
        "{response}"
    );
}

/// The stream position of an event.
fn position_of(server: &TestServer, event_id: &str) -> u64 {
    let storage = &server.server().services().storage;
    let event_id = ruma::EventId::parse(event_id).expect("event id");
    let short = tuwunel::rooms::event_short(storage, &event_id).expect("read").expect("known");
    tuwunel::rooms::event_meta(storage.engine(), short).expect("read").expect("meta").position
}

fn room_short(server: &TestServer, room: &str) -> u64 {
    let storage = &server.server().services().storage;
    let room = ruma::RoomId::parse(room).expect("room id");
    tuwunel::rooms::room(storage, &room).expect("read").expect("known").short
}

fn activity_of(server: &TestServer, room: u64) -> (u64, u64) {
    let storage = &server.server().services().storage;
    let activity = tuwunel::rooms::activity::current(storage, room).expect("read");
    (activity.last, activity.bump)
}

fn stored_activity(server: &TestServer, room: u64) -> Option<(u64, u64)> {
    let storage = &server.server().services().storage;
    tuwunel::storage::rooms::ROOM_ACTIVITY_TABLE
        .get(storage.engine(), &room)
        .expect("read")
        .map(|activity| (activity.last, activity.bump))
}

async fn send(
    server: &TestServer,
    user: &User,
    room: &str,
    kind: &str,
    txn: &str,
    content: Value,
) -> String {
    let path = format!("/_matrix/client/v3/rooms/{room}/send/{kind}/{txn}");
    let (status, body) = server.put_as(user, &path, content).await;
    assert_eq!(status, 200, "{body}");
    body["event_id"].as_str().expect("event id").to_owned()
}

#[tokio::test]
async fn the_activity_index_moves_last_with_every_event_and_bump_with_messages() {
    let mut server = TestServer::with_options(QUICK).await;
    server.register("admin", "pw").await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({})).await;
    let short = room_short(&server, &room);
    let message = send_text(&server, &alice, &room, "m1", "hello").await;
    let message_at = position_of(&server, &message);
    assert_eq!(activity_of(&server, short), (message_at, message_at));
    assert_eq!(stored_activity(&server, short), Some((message_at, message_at)));

    // A reaction and a member change move `last` but not `bump`.
    let reaction = send(
        &server,
        &alice,
        &room,
        "m.reaction",
        "r1",
        json!({
            "m.relates_to": { "rel_type": "m.annotation", "event_id": message, "key": "👍" }
        }),
    )
    .await;
    assert_eq!(activity_of(&server, short), (position_of(&server, &reaction), message_at));
    let (status, body) = server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/profile/{}/displayname", alice.id()),
            json!({"displayname": "Al"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (last, bump) = activity_of(&server, short);
    assert!(last > position_of(&server, &reaction), "the member event is newer");
    assert_eq!(bump, message_at);
    // The list reports the bump, not the member event.
    let body = ok(&server, &alice, "", all_rooms(9)).await;
    assert_eq!(body["rooms"][&room]["bump_stamp"], message_at, "{body}");

    // The unstable poll type Element sends bumps.
    let poll = send(&server, &alice, &room, "org.matrix.msc3381.poll.start", "p1", json!({})).await;
    let poll_at = position_of(&server, &poll);
    assert_eq!(activity_of(&server, short), (poll_at, poll_at));

    // A room without a row (a database from before the index) is read from its timeline,
    // and the read writes nothing; its next commit writes the row.
    let reaction = send(
        &server,
        &alice,
        &room,
        "m.reaction",
        "r2",
        json!({
            "m.relates_to": { "rel_type": "m.annotation", "event_id": poll, "key": "👍" }
        }),
    )
    .await;
    let expected = (position_of(&server, &reaction), poll_at);
    let mut batch = tuwunel::storage::Batch::new();
    tuwunel::storage::rooms::ROOM_ACTIVITY_TABLE.delete(&mut batch, &short);
    server.server().services().storage.writer().commit(batch).await.expect("commit");
    server.restart().await;
    assert_eq!(stored_activity(&server, short), None);
    assert_eq!(activity_of(&server, short), expected);
    assert_eq!(stored_activity(&server, short), None);
    let body = ok(&server, &alice, "", all_rooms(9)).await;
    assert_eq!(body["rooms"][&room]["bump_stamp"], poll_at, "{body}");
    let reaction = send(
        &server,
        &alice,
        &room,
        "m.reaction",
        "r3",
        json!({
            "m.relates_to": { "rel_type": "m.annotation", "event_id": message, "key": "🎉" }
        }),
    )
    .await;
    let after = (position_of(&server, &reaction), poll_at);
    assert_eq!(stored_activity(&server, short), Some(after));
    assert_eq!(activity_of(&server, short), after);
}

#[tokio::test]
async fn the_fact_cache_answers_the_create_type_and_encryption() {
    use tuwunel::rooms::{StateFact, state_fact};
    let server = TestServer::with_options(QUICK).await;
    let alice = server.register("alice", "pw").await;
    let plain = create_room(&server, &alice, json!({})).await;
    let space = create_room(
        &server,
        &alice,
        json!({
            "creation_content": { "type": "m.space" },
            "initial_state": [{
                "type": "m.room.encryption", "state_key": "",
                "content": { "algorithm": "m.megolm.v1.aes-sha2" }
            }]
        }),
    )
    .await;
    let storage = &server.server().services().storage;
    let fact = |room: &str, fact| {
        let heads = tuwunel::rooms::heads(storage.engine(), room_short(&server, room))
            .expect("read")
            .expect("heads");
        state_fact(storage, heads.snapshot, fact).expect("read")
    };
    for _ in 0..2 {
        assert_eq!(fact(&plain, StateFact::CreateType), None);
        assert_eq!(fact(&plain, StateFact::Encryption), None);
        assert_eq!(fact(&space, StateFact::CreateType).as_deref(), Some("m.space"));
        assert_eq!(fact(&space, StateFact::Encryption).as_deref(), Some("m.megolm.v1.aes-sha2"));
    }
}

/// The `body` of each timeline event of a room's result.
fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|event| event["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

fn texts(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|index| format!("message {index}")).collect()
}

fn with_limit(end: u64, timeline_limit: u64) -> Value {
    json!({ "lists": { "all": { "ranges": [[0, end]], "timeline_limit": timeline_limit } } })
}

#[tokio::test]
async fn timelines_are_limited_page_with_messages_and_continue_with_new_events() {
    let server = TestServer::with_options(QUICK).await;
    server.register("admin", "pw").await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({})).await;
    for index in 0..10 {
        send_text(&server, &alice, &room, &format!("m{index}"), &format!("message {index}")).await;
    }
    let body = ok(&server, &alice, "", with_limit(9, 3)).await;
    let result = &body["rooms"][&room];
    assert_eq!(bodies(result), texts(7..10), "{body}");
    assert_eq!(result["limited"], true, "{body}");
    assert_eq!(result["initial"], true, "{body}");
    assert!(result.get("num_live").is_none(), "{body}");
    // The rest is paged with /messages from prev_batch.
    let from = result["prev_batch"].as_str().expect("prev_batch");
    let (status, page) = server
        .get_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from={from}&limit=3"),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let paged: Vec<&str> = page["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|event| event["content"]["body"].as_str())
        .collect();
    assert_eq!(paged, ["message 6", "message 5", "message 4"], "{page}");

    // Incremental: only the new events, all of them live.
    let pos = pos_of(&body);
    for index in 10..12 {
        send_text(&server, &alice, &room, &format!("m{index}"), &format!("message {index}")).await;
    }
    let body = ok(&server, &alice, &format!("?pos={pos}"), with_limit(9, 3)).await;
    let result = &body["rooms"][&room];
    assert_eq!(bodies(result), texts(10..12), "{body}");
    assert!(result.get("limited").is_none() && result.get("initial").is_none(), "{body}");
    assert_eq!(result["num_live"], 2, "{body}");

    // Nothing new: the room is not sent.
    let pos = pos_of(&body);
    let body = ok(&server, &alice, &format!("?pos={pos}"), with_limit(9, 3)).await;
    assert!(body["rooms"].get(&room).is_none(), "{body}");

    // A bigger timeline_limit sends the latest events again.
    let pos = pos_of(&body);
    let body = ok(&server, &alice, &format!("?pos={pos}"), with_limit(9, 10)).await;
    let result = &body["rooms"][&room];
    assert_eq!(bodies(result), texts(2..12), "{body}");
    assert_eq!(result["limited"], true, "{body}");
    assert_eq!(result["num_live"], 0, "{body}");
}

#[tokio::test]
async fn a_room_that_left_the_window_with_updates_gets_exactly_those_when_it_returns() {
    let server = TestServer::with_options(QUICK).await;
    server.register("admin", "pw").await;
    let alice = server.register("alice", "pw").await;
    let mut rooms = Vec::new();
    for index in 0..3 {
        let room = create_room(&server, &alice, json!({})).await;
        send_text(&server, &alice, &room, &format!("t{index}"), "hello").await;
        rooms.push(room);
    }
    let (first, second) = (&rooms[0], &rooms[1]);
    let body = ok(&server, &alice, "", with_limit(2, 5)).await;
    assert_eq!(room_ids(&body).len(), 3, "{body}");
    // The oldest room gets news and becomes the newest, while the window shows only the
    // third place (the middle room, which has nothing new).
    send_text(&server, &alice, first, "a1", "away 1").await;
    send_text(&server, &alice, first, "a2", "away 2").await;
    let window = |index: u64| json!({ "lists": { "all": { "ranges": [[index, index]], "timeline_limit": 5 } } });
    let body = ok(&server, &alice, &format!("?pos={}", pos_of(&body)), window(2)).await;
    assert!(body["rooms"].get(first).is_none(), "{body}");
    assert!(body["rooms"].get(second).is_none(), "{body}");
    send_text(&server, &alice, first, "a3", "away 3").await;
    let body = ok(&server, &alice, &format!("?pos={}", pos_of(&body)), window(0)).await;
    let result = &body["rooms"][first];
    assert_eq!(bodies(result), ["away 1", "away 2", "away 3"], "{body}");
    assert!(result.get("initial").is_none() && result.get("limited").is_none(), "{body}");
}

async fn put_state(server: &TestServer, user: &User, room: &str, kind: &str, content: Value) {
    let path = format!("/_matrix/client/v3/rooms/{room}/state/{kind}/");
    let (status, body) = server.put_as(user, &path, content).await;
    assert_eq!(status, 200, "{body}");
}

async fn join(server: &TestServer, user: &User, room: &str) {
    let (status, body) =
        server.post_as(user, &format!("/_matrix/client/v3/rooms/{room}/join"), json!({})).await;
    assert_eq!(status, 200, "{body}");
}

async fn invite(server: &TestServer, user: &User, room: &str, invitee: &User) {
    let path = format!("/_matrix/client/v3/rooms/{room}/invite");
    let (status, body) = server.post_as(user, &path, json!({ "user_id": invitee.id() })).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn names_avatars_heroes_and_member_counts_follow_the_state() {
    let server = TestServer::with_options(QUICK).await;
    server.register("admin", "pw").await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let (status, body) = server
        .put_as(
            &bob,
            &format!("/_matrix/client/v3/profile/{}/displayname", bob.id()),
            json!({ "displayname": "Bobby" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let named = create_room(&server, &alice, json!({ "name": "Garden" })).await;
    let unnamed = create_room(&server, &alice, json!({})).await;
    for room in [&named, &unnamed] {
        invite(&server, &alice, room, &bob).await;
        join(&server, &bob, room).await;
    }
    let body = ok(&server, &alice, "", with_limit(9, 1)).await;
    let result = &body["rooms"][&named];
    assert_eq!(result["name"], "Garden", "{body}");
    assert_eq!(result["joined_count"], 2, "{body}");
    assert_eq!(result["invited_count"], 0, "{body}");
    assert!(result.get("heroes").is_none() && result.get("avatar").is_none(), "{body}");
    let result = &body["rooms"][&unnamed];
    assert!(result.get("name").is_none(), "{body}");
    assert_eq!(
        result["heroes"],
        json!([{ "user_id": bob.id(), "displayname": "Bobby" }]),
        "{body}"
    );

    // An avatar appears; the name is not repeated.
    put_state(&server, &alice, &named, "m.room.avatar", json!({ "url": "mxc://test.local/abc" }))
        .await;
    let body = ok(&server, &alice, &format!("?pos={}", pos_of(&body)), with_limit(9, 1)).await;
    let result = &body["rooms"][&named];
    assert_eq!(result["avatar"], "mxc://test.local/abc", "{body}");
    assert!(result.get("name").is_none() && result.get("joined_count").is_none(), "{body}");
    // A new name, then the avatar removed: `null`.
    put_state(&server, &alice, &named, "m.room.name", json!({ "name": "Orchard" })).await;
    put_state(&server, &alice, &named, "m.room.avatar", json!({})).await;
    let body = ok(&server, &alice, &format!("?pos={}", pos_of(&body)), with_limit(9, 1)).await;
    let result = &body["rooms"][&named];
    assert_eq!(result["name"], "Orchard", "{body}");
    assert!(result.get("avatar").is_some_and(Value::is_null), "{body}");
    // Bob leaves the unnamed room: counts and heroes follow.
    let (status, left) =
        server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{unnamed}/leave"), json!({})).await;
    assert_eq!(status, 200, "{left}");
    let body = ok(&server, &alice, &format!("?pos={}", pos_of(&body)), with_limit(9, 1)).await;
    let result = &body["rooms"][&unnamed];
    assert_eq!(result["joined_count"], 1, "{body}");
    assert_eq!(result["heroes"], json!([]), "{body}");
}

#[tokio::test]
async fn unread_counts_rise_with_messages_and_fall_with_a_receipt() {
    let server = TestServer::with_options(QUICK).await;
    server.register("admin", "pw").await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = create_room(&server, &alice, json!({})).await;
    invite(&server, &alice, &room, &bob).await;
    join(&server, &bob, &room).await;
    let body = ok(&server, &alice, "", with_limit(9, 1)).await;
    assert_eq!(body["rooms"][&room]["notification_count"], 0, "{body}");
    let event = send_text(&server, &bob, &room, "b1", "hello alice").await;
    let body = ok(&server, &alice, &format!("?pos={}", pos_of(&body)), with_limit(9, 1)).await;
    assert_eq!(body["rooms"][&room]["notification_count"], 1, "{body}");
    let (status, receipt) = server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event}"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{receipt}");
    // Sent for the counts alone, without events.
    let body = ok(&server, &alice, &format!("?pos={}", pos_of(&body)), with_limit(9, 1)).await;
    let result = &body["rooms"][&room];
    assert_eq!(result["notification_count"], 0, "{body}");
    assert_eq!(result["highlight_count"], 0, "{body}");
    assert!(result.get("timeline").is_none(), "{body}");
}

#[tokio::test]
async fn invites_carry_their_state_dms_are_flagged_and_history_stays_hidden() {
    let server = TestServer::with_options(QUICK).await;
    server.register("admin", "pw").await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let secret = create_room(
        &server,
        &bob,
        json!({ "name": "Secret", "initial_state": [{
            "type": "m.room.history_visibility", "state_key": "",
            "content": { "history_visibility": "joined" }
        }] }),
    )
    .await;
    send_text(&server, &bob, &secret, "s1", "before you came").await;
    invite(&server, &bob, &secret, &alice).await;
    let body = ok(&server, &alice, "", with_limit(9, 5)).await;
    let result = &body["rooms"][&secret];
    assert!(result.get("timeline").is_none(), "{body}");
    let invite_state = result["invite_state"].as_array().expect("invite_state");
    assert!(
        invite_state
            .iter()
            .any(|event| event["type"] == "m.room.name" && event["content"]["name"] == "Secret"),
        "{body}"
    );
    assert!(
        invite_state.iter().any(|event| event["type"] == "m.room.member"
            && event["state_key"] == alice.id().as_str()
            && event["content"]["membership"] == "invite"),
        "{body}"
    );
    // Joined, the room is sent afresh, with what came after the join only.
    join(&server, &alice, &secret).await;
    send_text(&server, &bob, &secret, "s2", "welcome").await;
    let body = ok(&server, &alice, &format!("?pos={}", pos_of(&body)), with_limit(9, 5)).await;
    let result = &body["rooms"][&secret];
    assert_eq!(bodies(result), ["welcome"], "{body}");
    assert_eq!(result["initial"], true, "{body}");
    assert_eq!(result["name"], "Secret", "{body}");
    assert!(result.get("invite_state").is_none(), "{body}");

    // `m.direct` flags the room as a DM, and a change is sent.
    let path = format!("/_matrix/client/v3/user/{}/account_data/m.direct", alice.id());
    let mut direct = serde_json::Map::new();
    direct.insert(bob.id().to_string(), json!([secret]));
    let (status, set) = server.put_as(&alice, &path, Value::Object(direct)).await;
    assert_eq!(status, 200, "{set}");
    let body = ok(&server, &alice, &format!("?pos={}", pos_of(&body)), with_limit(9, 5)).await;
    assert_eq!(body["rooms"][&secret]["is_dm"], true, "{body}");
    let fresh = ok(&server, &alice, "", with_limit(9, 5)).await;
    assert_eq!(fresh["rooms"][&secret]["is_dm"], true, "{fresh}");
    assert_eq!(bodies(&fresh["rooms"][&secret]), ["welcome"], "{fresh}");
}
