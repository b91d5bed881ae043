//! Event relationships: bundled aggregations (edits, threads, references), `/relations`
//! pagination and recursion, `/threads`, and history visibility of children.

use serde_json::{Value, json};

use crate::{
    common::{TestServer, User, assert_error},
    rooms::{create_room, send_text},
};

/// Sends an `m.room.message` with arbitrary content.
async fn send(server: &TestServer, user: &User, room: &str, txn: &str, content: Value) -> String {
    send_typed(server, user, room, "m.room.message", txn, content).await
}

async fn send_typed(
    server: &TestServer,
    user: &User,
    room: &str,
    kind: &str,
    txn: &str,
    content: Value,
) -> String {
    let path = format!("/_matrix/client/v3/rooms/{room}/send/{kind}/{txn}");
    let (status, response) = server.put_as(user, &path, content).await;
    assert_eq!(status, 200, "send: {response}");
    response["event_id"].as_str().expect("event_id").to_owned()
}

fn related(body: &str, rel_type: &str, parent: &str) -> Value {
    json!({
        "msgtype": "m.text",
        "body": body,
        "m.relates_to": {"rel_type": rel_type, "event_id": parent},
    })
}

fn edit(body: &str, parent: &str) -> Value {
    json!({
        "msgtype": "m.text",
        "body": format!("* {body}"),
        "m.new_content": {"msgtype": "m.text", "body": body},
        "m.relates_to": {"rel_type": "m.replace", "event_id": parent},
    })
}

async fn event(server: &TestServer, user: &User, room: &str, event: &str) -> Value {
    let (status, body) =
        server.get_as(user, &format!("/_matrix/client/v3/rooms/{room}/event/{event}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn relations(server: &TestServer, user: &User, room: &str, rest: &str) -> Value {
    let (status, body) =
        server.get_as(user, &format!("/_matrix/client/v1/rooms/{room}/relations/{rest}")).await;
    assert_eq!(status, 200, "{rest}: {body}");
    body
}

fn ids(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .expect("array of events")
        .iter()
        .map(|event| event["event_id"].as_str().expect("event_id").to_owned())
        .collect()
}

/// A public room of `owner` that `others` have joined.
async fn public_room(server: &TestServer, owner: &User, others: &[&User]) -> String {
    let room = create_room(server, owner, json!({"preset": "public_chat"})).await;
    for user in others {
        let (status, body) =
            server.post_as(user, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
        assert_eq!(status, 200, "join: {body}");
    }
    room
}

#[tokio::test]
async fn edits_are_bundled_latest_by_the_sender() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = public_room(&server, &alice, &[&bob]).await;
    let original = send_text(&server, &alice, &room, "o1", "helo").await;

    // Nothing related yet: no bundle at all.
    let plain = event(&server, &alice, &room, &original).await;
    assert!(plain["unsigned"].get("m.relations").is_none(), "{plain}");

    let first = send(&server, &alice, &room, "e1", edit("hello", &original)).await;
    let second = send(&server, &alice, &room, "e2", edit("hello world", &original)).await;
    // Not valid replacements: by someone else, or without m.new_content.
    send(&server, &bob, &room, "e3", edit("bob was here", &original)).await;
    send(&server, &alice, &room, "e4", related("no new content", "m.replace", &original)).await;

    // The most recent valid edit by origin_server_ts, then event id.
    let first_event = event(&server, &alice, &room, &first).await;
    let second_event = event(&server, &alice, &room, &second).await;
    let key = |event: &Value| {
        (event["origin_server_ts"].as_u64().expect("ts"), event["event_id"].to_string())
    };
    let expected = if key(&second_event) > key(&first_event) { &second } else { &first };

    let bundled = event(&server, &bob, &room, &original).await;
    let replace = &bundled["unsigned"]["m.relations"]["m.replace"];
    assert_eq!(replace["event_id"], expected.as_str(), "{bundled}");
    assert_eq!(replace["sender"], alice.user_id.as_str());
    assert_eq!(replace["type"], "m.room.message");
    assert!(replace["content"]["m.new_content"]["body"].is_string(), "{replace}");
    assert!(replace["origin_server_ts"].is_u64(), "{replace}");
    // The original content stays as it was.
    assert_eq!(bundled["content"]["body"], "helo");
    // Bundled events carry no bundles of their own here.
    assert!(replace["unsigned"].get("m.relations").is_none(), "{replace}");

    // The same bundle through /messages and /context.
    let (_, messages) = server
        .get_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20"))
        .await;
    let listed = messages["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .find(|event| event["event_id"] == original.as_str())
        .expect("original in /messages");
    assert_eq!(listed["unsigned"]["m.relations"]["m.replace"]["event_id"], expected.as_str());
    let (_, context) = server
        .get_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/context/{original}?limit=2"))
        .await;
    assert_eq!(
        context["event"]["unsigned"]["m.relations"]["m.replace"]["event_id"],
        expected.as_str()
    );

    // Redacting the latest edit falls back to the other one.
    let other = if expected == &second { &first } else { &second };
    let (status, body) = server
        .put_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/redact/{expected}/x1"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let bundled = event(&server, &alice, &room, &original).await;
    assert_eq!(bundled["unsigned"]["m.relations"]["m.replace"]["event_id"], other.as_str());

    // A redacted original bundles no edits.
    let (status, _) = server
        .put_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/redact/{original}/x2"), json!({}))
        .await;
    assert_eq!(status, 200);
    let redacted = event(&server, &alice, &room, &original).await;
    assert!(redacted["unsigned"]["m.relations"].get("m.replace").is_none(), "{redacted}");
    server.stop().await;
}

#[tokio::test]
async fn threads_are_summarised_and_listed_by_activity() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let carol = server.register("carol", "pw").await;
    let dave = server.register("dave", "pw").await;
    let room = public_room(&server, &alice, &[&bob, &carol]).await;
    let first = send_text(&server, &alice, &room, "r1", "first topic").await;
    let second = send_text(&server, &alice, &room, "r2", "second topic").await;
    send_text(&server, &alice, &room, "r3", "not a thread").await;

    send(&server, &bob, &room, "t1", related("a1", "m.thread", &first)).await;
    send(&server, &carol, &room, "t2", related("b1", "m.thread", &second)).await;
    let latest_first = send(&server, &bob, &room, "t3", related("a2", "m.thread", &first)).await;

    // The root's bundle: count, latest reply, participation per viewer.
    let root = event(&server, &alice, &room, &first).await;
    let thread = &root["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(thread["count"], 2, "{root}");
    assert_eq!(thread["latest_event"]["event_id"], latest_first.as_str());
    assert_eq!(thread["latest_event"]["content"]["body"], "a2");
    assert_eq!(thread["current_user_participated"], true, "the root's sender took part");
    let as_bob = event(&server, &bob, &room, &first).await;
    assert_eq!(as_bob["unsigned"]["m.relations"]["m.thread"]["current_user_participated"], true);
    let as_carol = event(&server, &carol, &room, &first).await;
    assert_eq!(as_carol["unsigned"]["m.relations"]["m.thread"]["current_user_participated"], false);

    // Threads by latest activity.
    let threads = |user: User, query: &'static str| {
        let server = &server;
        let room = room.clone();
        async move {
            let (status, body) = server
                .get_as(&user, &format!("/_matrix/client/v1/rooms/{room}/threads{query}"))
                .await;
            assert_eq!(status, 200, "{query}: {body}");
            body
        }
    };
    let listed = threads(alice.clone(), "").await;
    assert_eq!(ids(&listed["chunk"]), [first.clone(), second.clone()], "{listed}");
    assert_eq!(listed["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"], 2);
    send(&server, &carol, &room, "t4", related("b2", "m.thread", &second)).await;
    let listed = threads(alice.clone(), "").await;
    assert_eq!(ids(&listed["chunk"]), [second.clone(), first.clone()]);
    assert!(listed.get("next_batch").is_none(), "{listed}");

    // Only threads the caller took part in.
    let listed = threads(bob.clone(), "?include=participated").await;
    assert_eq!(ids(&listed["chunk"]), [first.as_str()]);
    let listed = threads(carol.clone(), "?include=participated").await;
    assert_eq!(ids(&listed["chunk"]), [second.as_str()]);
    let listed = threads(alice.clone(), "?include=participated").await;
    assert_eq!(ids(&listed["chunk"]), [second.clone(), first.clone()]);

    // Paging one thread at a time.
    let page = threads(alice.clone(), "?limit=1").await;
    assert_eq!(ids(&page["chunk"]), [second.as_str()]);
    let token = page["next_batch"].as_str().expect("next_batch").to_owned();
    let (status, page) = server
        .get_as(&alice, &format!("/_matrix/client/v1/rooms/{room}/threads?limit=1&from={token}"))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page["chunk"]), [first.as_str()]);
    assert!(page.get("next_batch").is_none(), "{page}");

    // The latest reply carries its own edits.
    let fix = send(&server, &bob, &room, "t5", edit("a2 fixed", &latest_first)).await;
    let root = event(&server, &alice, &room, &first).await;
    let latest = &root["unsigned"]["m.relations"]["m.thread"]["latest_event"];
    assert_eq!(latest["unsigned"]["m.relations"]["m.replace"]["event_id"], fix.as_str());

    // Replies of ignored users do not count.
    let (status, body) = server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/user/{}/account_data/m.ignored_user_list", alice.user_id),
            json!({"ignored_users": {bob.user_id.clone(): {}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let root = event(&server, &alice, &room, &first).await;
    assert!(root["unsigned"]["m.relations"].get("m.thread").is_none(), "{root}");

    // Errors: bad parameters, and rooms the caller cannot see.
    for query in ["?limit=0", "?include=everything", "?from=nonsense"] {
        let (status, body) =
            server.get_as(&alice, &format!("/_matrix/client/v1/rooms/{room}/threads{query}")).await;
        assert_error(status, &body, 400, "M_INVALID_PARAM");
    }
    let (status, body) =
        server.get_as(&dave, &format!("/_matrix/client/v1/rooms/{room}/threads")).await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    let (status, body) =
        server.get_as(&alice, "/_matrix/client/v1/rooms/!nowhere:test.local/threads").await;
    assert_error(status, &body, 403, "M_FORBIDDEN");
    server.stop().await;
}

#[tokio::test]
async fn a_redaction_that_relates_to_its_target_keeps_it_a_parent() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = public_room(&server, &alice, &[&bob]).await;
    let target = send_text(&server, &alice, &room, "t", "to be removed").await;
    // The redaction both strips its target and is a reference to it: the one commit writes
    // the target's metadata twice, and the second write must keep the first's mark.
    let (status, body) = server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.redaction/x1"),
            json!({"redacts": target, "m.relates_to": {"rel_type": "m.reference", "event_id": target}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let redaction = body["event_id"].as_str().expect("id").to_owned();
    let bundled = event(&server, &bob, &room, &target).await;
    assert_eq!(bundled["content"], json!({}), "{bundled}");
    assert_eq!(
        bundled["unsigned"]["m.relations"]["m.reference"],
        json!({"chunk": [{"event_id": redaction}]}),
        "{bundled}"
    );
    server.stop().await;
}

#[tokio::test]
async fn references_are_bundled_in_order() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = public_room(&server, &alice, &[&bob]).await;
    let parent = send_text(&server, &alice, &room, "p", "verification request").await;
    let one = send(&server, &bob, &room, "r1", related("one", "m.reference", &parent)).await;
    let two = send(&server, &alice, &room, "r2", related("two", "m.reference", &parent)).await;
    // Annotations are never aggregated by the server.
    send_typed(
        &server,
        &bob,
        &room,
        "m.reaction",
        "a1",
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": parent, "key": "👍"}}),
    )
    .await;

    let bundled = event(&server, &bob, &room, &parent).await;
    let relations = &bundled["unsigned"]["m.relations"];
    assert_eq!(relations["m.reference"], json!({"chunk": [{"event_id": one}, {"event_id": two}]}));
    assert!(relations.get("m.annotation").is_none(), "{relations}");
    assert!(relations.get("m.replace").is_none() && relations.get("m.thread").is_none());

    // A redacted reference no longer relates.
    let (status, _) = server
        .put_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/redact/{two}/x1"), json!({}))
        .await;
    assert_eq!(status, 200);
    let bundled = event(&server, &bob, &room, &parent).await;
    assert_eq!(
        bundled["unsigned"]["m.relations"]["m.reference"]["chunk"],
        json!([{"event_id": one}])
    );
    let listed = relations_of(&server, &bob, &room, &format!("{parent}/m.reference")).await;
    assert_eq!(ids(&listed["chunk"]), [one]);
    server.stop().await;
}

async fn relations_of(server: &TestServer, user: &User, room: &str, rest: &str) -> Value {
    relations(server, user, room, rest).await
}

#[tokio::test]
async fn relations_paginate_both_ways_and_filter() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let room = public_room(&server, &alice, &[]).await;
    let parent = send_text(&server, &alice, &room, "p", "parent").await;
    let mut children = Vec::new();
    for (index, rel_type) in
        ["m.reference", "org.example.rel", "m.reference", "org.example.rel", "m.reference"]
            .into_iter()
            .enumerate()
    {
        let child = send(
            &server,
            &alice,
            &room,
            &format!("c{index}"),
            related(&format!("child {index}"), rel_type, &parent),
        )
        .await;
        children.push(child);
    }
    let custom = send_typed(
        &server,
        &alice,
        &room,
        "org.example.event",
        "c9",
        json!({"m.relates_to": {"rel_type": "m.reference", "event_id": parent}}),
    )
    .await;
    let newest_first: Vec<String> =
        std::iter::once(custom.clone()).chain(children.iter().rev().cloned()).collect();
    let oldest_first: Vec<String> = newest_first.iter().rev().cloned().collect();

    // All of them, newest first by default; no recursion_depth unless asked.
    let all = relations(&server, &alice, &room, &parent).await;
    assert_eq!(ids(&all["chunk"]), newest_first, "{all}");
    assert!(all.get("next_batch").is_none() && all.get("recursion_depth").is_none(), "{all}");

    // Backwards in pages of two.
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..10 {
        let query = match &from {
            Some(token) => format!("{parent}?limit=2&from={token}"),
            None => format!("{parent}?limit=2"),
        };
        let page = relations(&server, &alice, &room, &query).await;
        if let Some(token) = &from {
            assert_eq!(page["prev_batch"], token.as_str());
        }
        seen.extend(ids(&page["chunk"]));
        match page["next_batch"].as_str() {
            Some(token) => from = Some(token.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);

    // Forwards in pages of two.
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    let mut first_page_end = None;
    for _ in 0..10 {
        let query = match &from {
            Some(token) => format!("{parent}?dir=f&limit=2&from={token}"),
            None => format!("{parent}?dir=f&limit=2"),
        };
        let page = relations(&server, &alice, &room, &query).await;
        seen.extend(ids(&page["chunk"]));
        match page["next_batch"].as_str() {
            Some(token) => {
                first_page_end.get_or_insert_with(|| token.to_owned());
                from = Some(token.to_owned());
            }
            None => break,
        }
    }
    assert_eq!(seen, oldest_first);

    // `to` stops a backwards page where the first forwards page ended.
    let first_page_end = first_page_end.expect("more than one forward page");
    let newer = relations(&server, &alice, &room, &format!("{parent}?to={first_page_end}")).await;
    assert_eq!(ids(&newer["chunk"]), newest_first[..newest_first.len() - 2].to_vec());
    assert!(newer.get("next_batch").is_none(), "{newer}");

    // By relation type, and by relation type and event type.
    let references = relations(&server, &alice, &room, &format!("{parent}/m.reference")).await;
    assert_eq!(
        ids(&references["chunk"]),
        [custom.clone(), children[4].clone(), children[2].clone(), children[0].clone()]
    );
    let custom_rel = relations(&server, &alice, &room, &format!("{parent}/org.example.rel")).await;
    assert_eq!(ids(&custom_rel["chunk"]), [children[3].clone(), children[1].clone()]);
    let typed = relations(
        &server,
        &alice,
        &room,
        &format!("{parent}/m.reference/m.room.message?dir=f&limit=2"),
    )
    .await;
    assert_eq!(ids(&typed["chunk"]), [children[0].clone(), children[2].clone()]);
    let token = typed["next_batch"].as_str().expect("next_batch");
    let typed = relations(
        &server,
        &alice,
        &room,
        &format!("{parent}/m.reference/m.room.message?dir=f&limit=2&from={token}"),
    )
    .await;
    assert_eq!(ids(&typed["chunk"]), [children[4].as_str()]);
    let typed =
        relations(&server, &alice, &room, &format!("{parent}/m.reference/org.example.event")).await;
    assert_eq!(ids(&typed["chunk"]), [custom.as_str()]);
    let none = relations(&server, &alice, &room, &format!("{parent}/m.thread")).await;
    assert_eq!(none["chunk"], json!([]));

    // Unknown events and rooms, events of another room, and rooms the caller is not in.
    let other_room = public_room(&server, &alice, &[]).await;
    let elsewhere = send_text(&server, &alice, &other_room, "x", "elsewhere").await;
    for (user, path) in [
        (&alice, format!("/_matrix/client/v1/rooms/{room}/relations/$unknown")),
        (&alice, format!("/_matrix/client/v1/rooms/!nowhere:test.local/relations/{parent}")),
        (&alice, format!("/_matrix/client/v1/rooms/{room}/relations/{elsewhere}")),
        (&bob, format!("/_matrix/client/v1/rooms/{room}/relations/{parent}")),
    ] {
        let (status, body) = server.get_as(user, &path).await;
        assert_error(status, &body, 404, "M_NOT_FOUND");
    }
    let (status, body) = server
        .get_as(&alice, &format!("/_matrix/client/v1/rooms/{room}/relations/{parent}?from=junk"))
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    server.stop().await;
}

#[tokio::test]
async fn recurse_follows_relations_of_relations() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = public_room(&server, &alice, &[]).await;
    let parent = send_text(&server, &alice, &room, "p", "root").await;
    // A chain four deep: parent <- a <- b <- c <- d.
    let a = send(&server, &alice, &room, "a", related("a", "m.reference", &parent)).await;
    let b = send(&server, &alice, &room, "b", related("b", "m.reference", &a)).await;
    let c = send(&server, &alice, &room, "c", related("c", "m.reference", &b)).await;
    send(&server, &alice, &room, "d", related("d", "m.reference", &c)).await;
    // A reference reached only through a relation of another type.
    let other = send(&server, &alice, &room, "o", related("o", "org.example.rel", &parent)).await;
    let behind = send(&server, &alice, &room, "f", related("f", "m.reference", &other)).await;

    let direct = relations(&server, &alice, &room, &format!("{parent}/m.reference")).await;
    assert_eq!(ids(&direct["chunk"]), [a.as_str()]);
    assert!(direct.get("recursion_depth").is_none());

    let deep =
        relations(&server, &alice, &room, &format!("{parent}/m.reference?recurse=true")).await;
    assert_eq!(ids(&deep["chunk"]), [c.clone(), b.clone(), a.clone()], "{deep}");
    assert_eq!(deep["recursion_depth"], 3);

    let everything = relations(&server, &alice, &room, &format!("{parent}?recurse=true")).await;
    assert_eq!(
        ids(&everything["chunk"]),
        [behind.clone(), other.clone(), c.clone(), b.clone(), a.clone()]
    );
    let page =
        relations(&server, &alice, &room, &format!("{parent}?recurse=true&limit=2&dir=f")).await;
    assert_eq!(ids(&page["chunk"]), [a.clone(), b.clone()]);
    let token = page["next_batch"].as_str().expect("next_batch");
    let page = relations(
        &server,
        &alice,
        &room,
        &format!("{parent}?recurse=true&limit=2&dir=f&from={token}"),
    )
    .await;
    assert_eq!(ids(&page["chunk"]), [c, other]);
    let explicit_false =
        relations(&server, &alice, &room, &format!("{parent}?recurse=false")).await;
    assert_eq!(ids(&explicit_false["chunk"]).len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn children_follow_history_visibility() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let carol = server.register("carol", "pw").await;
    let room = create_room(
        &server,
        &alice,
        json!({
            "preset": "public_chat",
            "initial_state": [{
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "joined"},
            }],
        }),
    )
    .await;
    let early = send_text(&server, &alice, &room, "e", "before carol").await;
    send(&server, &alice, &room, "e1", related("early reply", "m.thread", &early)).await;

    let join = |user: &User| {
        let path = format!("/_matrix/client/v3/rooms/{room}/join");
        let user = user.clone();
        let server = &server;
        async move {
            let (status, body) = server.post_as(&user, &path, json!({})).await;
            assert_eq!(status, 200, "join: {body}");
        }
    };
    join(&carol).await;
    // Carol cannot see the older parent, so neither its relations.
    let (status, body) =
        server.get_as(&carol, &format!("/_matrix/client/v1/rooms/{room}/relations/{early}")).await;
    assert_error(status, &body, 404, "M_NOT_FOUND");

    // A parent she can see, with a reply sent while she was away.
    let root = send_text(&server, &alice, &room, "r", "while carol is here").await;
    let seen_reply = send(&server, &alice, &room, "r1", related("one", "m.thread", &root)).await;
    let (status, _) =
        server.post_as(&carol, &format!("/_matrix/client/v3/rooms/{room}/leave"), json!({})).await;
    assert_eq!(status, 200);
    let hidden = send(&server, &alice, &room, "r2", related("two", "m.thread", &root)).await;
    join(&carol).await;
    let later = send(&server, &alice, &room, "r3", related("three", "m.thread", &root)).await;

    let for_alice = relations(&server, &alice, &room, &format!("{root}/m.thread")).await;
    assert_eq!(ids(&for_alice["chunk"]), [later.clone(), hidden.clone(), seen_reply.clone()]);
    let for_carol = relations(&server, &carol, &room, &format!("{root}/m.thread")).await;
    assert_eq!(ids(&for_carol["chunk"]), [later.clone(), seen_reply.clone()]);

    // The bundle counts only what the viewer may see.
    let as_alice = event(&server, &alice, &room, &root).await;
    assert_eq!(as_alice["unsigned"]["m.relations"]["m.thread"]["count"], 3);
    let as_carol = event(&server, &carol, &room, &root).await;
    assert_eq!(as_carol["unsigned"]["m.relations"]["m.thread"]["count"], 2, "{as_carol}");

    // /threads lists only roots she can see.
    let (status, listed) =
        server.get_as(&carol, &format!("/_matrix/client/v1/rooms/{room}/threads")).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(ids(&listed["chunk"]), [root.as_str()]);
    let (_, listed) =
        server.get_as(&alice, &format!("/_matrix/client/v1/rooms/{room}/threads")).await;
    assert_eq!(ids(&listed["chunk"]), [root, early]);
    server.stop().await;
}
