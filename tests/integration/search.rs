//! Server-side search: ranking and ordering, all terms, filters, context and profiles,
//! groupings, pagination, redactions and history visibility.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::{
    common::{TestServer, User, assert_error},
    rooms::{create_room, send_text},
};

async fn search(server: &TestServer, user: &User, criteria: Value) -> Value {
    search_from(server, user, criteria, None).await
}

async fn search_from(
    server: &TestServer,
    user: &User,
    criteria: Value,
    next_batch: Option<&str>,
) -> Value {
    let path = match next_batch {
        Some(token) => format!("/_matrix/client/v3/search?next_batch={token}"),
        None => "/_matrix/client/v3/search".to_owned(),
    };
    let (status, body) =
        server.post_as(user, &path, json!({"search_categories": {"room_events": criteria}})).await;
    assert_eq!(status, 200, "search: {body}");
    body["search_categories"]["room_events"].clone()
}

fn result_ids(found: &Value) -> Vec<String> {
    found["results"]
        .as_array()
        .map(|results| {
            results
                .iter()
                .map(|result| result["result"]["event_id"].as_str().expect("event_id").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn join(server: &TestServer, user: &User, room: &str) {
    let (status, body) =
        server.post_as(user, &format!("/_matrix/client/v3/join/{room}"), json!({})).await;
    assert_eq!(status, 200, "join: {body}");
}

#[tokio::test]
async fn rank_and_recent_ordering_with_all_terms() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    let once = send_text(&server, &alice, &room, "m1", "Apple and banana").await;
    let thrice = send_text(&server, &alice, &room, "m2", "apple, APPLE; apple!").await;
    send_text(&server, &alice, &room, "m3", "banana cherry").await;
    let twice = send_text(&server, &alice, &room, "m4", "apple apple").await;
    let once_later = send_text(&server, &alice, &room, "m5", "an apple a day").await;
    send_text(&server, &alice, &room, "m6", "pineapple is another word").await;

    // Rank: occurrences first, ties newest first (the default order).
    let found = search(&server, &alice, json!({"search_term": "apple"})).await;
    assert_eq!(
        result_ids(&found),
        [thrice.clone(), twice.clone(), once_later.clone(), once.clone()],
        "{found}"
    );
    assert_eq!(found["count"], 4);
    assert_eq!(found["highlights"], json!(["apple"]));
    let ranks: Vec<f64> = found["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|result| result["rank"].as_f64().expect("rank"))
        .collect();
    assert_eq!(ranks, [3.0, 2.0, 1.0, 1.0]);
    assert_eq!(found["results"][0]["result"]["content"]["body"], "apple, APPLE; apple!");
    let ranked = search(&server, &alice, json!({"search_term": "apple", "order_by": "rank"})).await;
    assert_eq!(result_ids(&ranked), result_ids(&found));

    // Recent: newest first.
    let recent =
        search(&server, &alice, json!({"search_term": "apple", "order_by": "recent"})).await;
    assert_eq!(result_ids(&recent), [once_later, twice, thrice, once.clone()]);

    // Every term must match, in any case.
    let both = search(&server, &alice, json!({"search_term": "BANANA apple"})).await;
    assert_eq!(result_ids(&both), [once]);
    assert_eq!(both["highlights"], json!(["banana", "apple"]));
    let none = search(&server, &alice, json!({"search_term": "apple durian"})).await;
    assert_eq!(none["count"], 0);
    assert!(result_ids(&none).is_empty());
    assert!(none.get("next_batch").is_none());

    // Keys: only message bodies are indexed; unknown keys and orders are refused.
    let body_only =
        search(&server, &alice, json!({"search_term": "cherry", "keys": ["content.body"]})).await;
    assert_eq!(body_only["count"], 1);
    let names_only =
        search(&server, &alice, json!({"search_term": "cherry", "keys": ["content.name"]})).await;
    assert_eq!(names_only["count"], 0);
    for criteria in [
        json!({"search_term": "apple", "keys": ["content.nope"]}),
        json!({"search_term": "apple", "order_by": "loudest"}),
        json!({"search_term": "apple", "groupings": {"group_by": [{"key": "colour"}]}}),
    ] {
        let (status, body) = server
            .post_as(
                &alice,
                "/_matrix/client/v3/search",
                json!({"search_categories": {"room_events": criteria}}),
            )
            .await;
        assert_error(status, &body, 400, "M_INVALID_PARAM");
    }
    let (status, body) = server
        .post_as(
            &alice,
            "/_matrix/client/v3/search?next_batch=garbage",
            json!({"search_categories": {"room_events": {"search_term": "apple"}}}),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    let (status, body) = server
        .post_as(
            &alice,
            "/_matrix/client/v3/search",
            json!({"search_categories": {"room_events": {}}}),
        )
        .await;
    assert_error(status, &body, 400, "M_BAD_JSON");
    server.stop().await;
}

#[tokio::test]
async fn filters_by_room_sender_and_type() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let eve = server.register("eve", "pw").await;
    let first = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    let second = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    join(&server, &bob, &first).await;
    let alice_first = send_text(&server, &alice, &first, "a1", "meeting at noon").await;
    let bob_first = send_text(&server, &bob, &first, "b1", "noon meeting works").await;
    let alice_second = send_text(&server, &alice, &second, "a2", "the meeting moved").await;
    let term = |extra: Value| {
        let mut criteria = json!({"search_term": "meeting", "order_by": "recent"});
        if let (Some(criteria), Some(extra)) = (criteria.as_object_mut(), extra.as_object()) {
            criteria.extend(extra.clone());
        }
        criteria
    };

    let everything = search(&server, &alice, term(json!({}))).await;
    assert_eq!(
        result_ids(&everything),
        [alice_second.clone(), bob_first.clone(), alice_first.clone()]
    );
    let in_first = search(&server, &alice, term(json!({"filter": {"rooms": [first]}}))).await;
    assert_eq!(result_ids(&in_first), [bob_first.clone(), alice_first.clone()]);
    let not_first = search(&server, &alice, term(json!({"filter": {"not_rooms": [first]}}))).await;
    assert_eq!(result_ids(&not_first), [alice_second.as_str()]);
    let by_bob = search(&server, &alice, term(json!({"filter": {"senders": [bob.user_id]}}))).await;
    assert_eq!(result_ids(&by_bob), [bob_first.as_str()]);
    let not_bob =
        search(&server, &alice, term(json!({"filter": {"not_senders": [bob.user_id]}}))).await;
    assert_eq!(result_ids(&not_bob), [alice_second.clone(), alice_first.clone()]);
    let wrong_type =
        search(&server, &alice, term(json!({"filter": {"types": ["m.room.topic"]}}))).await;
    assert_eq!(wrong_type["count"], 0);

    // Bob searches only the room he is in; eve, in none, finds nothing.
    let for_bob = search(&server, &bob, term(json!({}))).await;
    assert_eq!(result_ids(&for_bob), [bob_first, alice_first]);
    let for_eve = search(&server, &eve, term(json!({}))).await;
    assert_eq!(for_eve["count"], 0);
    server.stop().await;
}

#[tokio::test]
async fn context_profiles_and_state() {
    let mut server = TestServer::with_options(&["new_user_displayname_suffix=\"\""]).await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let (status, _) = server
        .put_as(
            &alice,
            &format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id),
            json!({"displayname": "Alice Liddell"}),
        )
        .await;
    assert_eq!(status, 200);
    let room = create_room(&server, &alice, json!({"preset": "public_chat", "name": "Tea"})).await;
    join(&server, &bob, &room).await;
    let before = send_text(&server, &bob, &room, "b1", "who brings the tea").await;
    let found_id = send_text(&server, &alice, &room, "a1", "the hatter brings crumpets").await;
    let after = send_text(&server, &bob, &room, "b2", "lovely").await;
    send_text(&server, &bob, &room, "b3", "see you").await;

    let found = search(
        &server,
        &bob,
        json!({
            "search_term": "crumpets",
            "event_context": {"before_limit": 1, "after_limit": 1, "include_profile": true},
            "include_state": true,
        }),
    )
    .await;
    assert_eq!(result_ids(&found), [found_id.as_str()], "{found}");
    let context = &found["results"][0]["context"];
    assert_eq!(context["events_before"][0]["event_id"], before.as_str(), "{context}");
    assert_eq!(context["events_before"].as_array().map(Vec::len), Some(1));
    assert_eq!(context["events_after"][0]["event_id"], after.as_str());
    assert_eq!(context["events_after"].as_array().map(Vec::len), Some(1));
    assert!(context["start"].is_string() && context["end"].is_string(), "{context}");
    let profiles = &context["profile_info"];
    assert_eq!(profiles[&alice.user_id]["displayname"], "Alice Liddell", "{profiles}");
    assert_eq!(profiles[&bob.user_id]["displayname"], "bob", "{profiles}");

    // The context tokens page /messages from there.
    let start = context["start"].as_str().expect("start");
    let (status, older) = server
        .get_as(
            &bob,
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1&from={start}"),
        )
        .await;
    assert_eq!(status, 200, "{older}");
    assert_ne!(older["chunk"][0]["event_id"], before.as_str(), "{older}");

    // Current state of the rooms with results.
    let state = found["state"][&room].as_array().expect("room state");
    assert!(state.iter().any(|event| event["type"] == "m.room.name"), "{state:?}");

    // Default context: five either side, no profiles.
    let plain = search(&server, &bob, json!({"search_term": "crumpets"})).await;
    let context = &plain["results"][0]["context"];
    assert_eq!(context["events_after"].as_array().map(Vec::len), Some(2), "{context}");
    assert!(context.get("profile_info").is_none(), "{context}");
    assert!(plain.get("state").is_none());
    server.stop().await;
}

#[tokio::test]
async fn groupings_by_room_and_sender() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
    let first = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    let second = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    join(&server, &bob, &first).await;
    let a1 = send_text(&server, &alice, &first, "a1", "rocket launch").await;
    let b1 = send_text(&server, &bob, &first, "b1", "rocket rocket").await;
    let a2 = send_text(&server, &alice, &second, "a2", "rocket rocket rocket").await;

    let found = search(
        &server,
        &alice,
        json!({
            "search_term": "rocket",
            "groupings": {"group_by": [{"key": "room_id"}, {"key": "sender"}]},
        }),
    )
    .await;
    assert_eq!(result_ids(&found), [a2.clone(), b1.clone(), a1.clone()]);
    let rooms = &found["groups"]["room_id"];
    assert_eq!(rooms[&second]["results"], json!([a2]), "{found}");
    assert_eq!(rooms[&second]["order"], 1);
    assert_eq!(rooms[&first]["results"], json!([b1, a1]));
    assert_eq!(rooms[&first]["order"], 2);
    assert!(rooms[&first].get("next_batch").is_none());
    let senders = &found["groups"]["sender"];
    assert_eq!(senders[&alice.user_id]["results"], json!([a2, a1]));
    assert_eq!(senders[&alice.user_id]["order"], 1);
    assert_eq!(senders[&bob.user_id]["results"], json!([b1]));
    assert_eq!(senders[&bob.user_id]["order"], 2);

    // A group's token pages within that group only.
    let criteria = json!({
        "search_term": "rocket",
        "filter": {"limit": 1},
        "groupings": {"group_by": [{"key": "sender"}]},
    });
    let page = search(&server, &alice, criteria.clone()).await;
    assert_eq!(result_ids(&page), [a2.as_str()]);
    assert!(page["next_batch"].is_string(), "{page}");
    let group = &page["groups"]["sender"][&alice.user_id];
    assert_eq!(group["results"], json!([a2]));
    let token = group["next_batch"].as_str().expect("group next_batch").to_owned();
    let within = search_from(&server, &alice, criteria, Some(&token)).await;
    assert_eq!(result_ids(&within), [a1.as_str()], "{within}");
    assert!(within.get("next_batch").is_none(), "{within}");
    server.stop().await;
}

#[tokio::test]
async fn next_batch_pages_without_duplicates() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let room = create_room(&server, &alice, json!({"preset": "public_chat"})).await;
    let mut sent = HashSet::new();
    for index in 0..7 {
        // Ranks 1..3 repeat so ties are broken by recency.
        let body = vec!["comet"; index % 3 + 1].join(" ");
        sent.insert(send_text(&server, &alice, &room, &format!("c{index}"), &body).await);
    }
    for order in ["rank", "recent"] {
        let criteria = json!({"search_term": "comet", "order_by": order, "filter": {"limit": 3}});
        let whole = search(
            &server,
            &alice,
            json!({"search_term": "comet", "order_by": order, "filter": {"limit": 10}}),
        )
        .await;
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = search_from(&server, &alice, criteria.clone(), token.as_deref()).await;
            pages += 1;
            assert_eq!(page["count"], 7, "{page}");
            seen.extend(result_ids(&page));
            match page["next_batch"].as_str() {
                Some(next) => token = Some(next.to_owned()),
                None => break,
            }
            assert!(pages < 10, "pagination does not end");
        }
        assert_eq!(pages, 3, "{order}");
        assert_eq!(seen, result_ids(&whole), "{order}: pages follow the full order");
        assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), sent, "{order}");
    }
    // A token of one ordering does not fit the other.
    let page = search(
        &server,
        &alice,
        json!({"search_term": "comet", "order_by": "rank", "filter": {"limit": 1}}),
    )
    .await;
    let token = page["next_batch"].as_str().expect("next_batch");
    let (status, body) = server
        .post_as(
            &alice,
            &format!("/_matrix/client/v3/search?next_batch={token}"),
            json!({"search_categories": {"room_events": {"search_term": "comet", "order_by": "recent"}}}),
        )
        .await;
    assert_error(status, &body, 400, "M_INVALID_PARAM");
    server.stop().await;
}

#[tokio::test]
async fn redacted_and_invisible_events_are_not_found() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let bob = server.register("bob", "pw").await;
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
    let secret = send_text(&server, &alice, &room, "s1", "the password is swordfish").await;
    let found = search(&server, &alice, json!({"search_term": "swordfish"})).await;
    assert_eq!(result_ids(&found), [secret.as_str()]);
    let (status, _) = server
        .put_as(&alice, &format!("/_matrix/client/v3/rooms/{room}/redact/{secret}/x1"), json!({}))
        .await;
    assert_eq!(status, 200);
    let gone = search(&server, &alice, json!({"search_term": "swordfish"})).await;
    assert_eq!(gone["count"], 0, "{gone}");

    // Joined later: the earlier history stays hidden.
    let early = send_text(&server, &alice, &room, "e1", "early lighthouse").await;
    join(&server, &bob, &room).await;
    join(&server, &carol, &room).await;
    let seen = send_text(&server, &alice, &room, "e2", "lighthouse while bob is here").await;
    let found = search(&server, &bob, json!({"search_term": "lighthouse"})).await;
    assert_eq!(result_ids(&found), [seen.as_str()]);
    let found =
        search(&server, &alice, json!({"search_term": "lighthouse", "order_by": "recent"})).await;
    assert_eq!(result_ids(&found), [seen.clone(), early]);

    // Left rooms: what they saw while joined, nothing after.
    let (status, _) =
        server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/leave"), json!({})).await;
    assert_eq!(status, 200);
    send_text(&server, &alice, &room, "e3", "lighthouse after bob left").await;
    let found = search(&server, &bob, json!({"search_term": "lighthouse"})).await;
    assert_eq!(result_ids(&found), [seen.as_str()], "{found}");
    // Context of a left room stops where the user stopped seeing.
    let context = &found["results"][0]["context"];
    let after: Vec<&str> = context["events_after"]
        .as_array()
        .map(|events| events.iter().filter_map(|event| event["content"]["body"].as_str()).collect())
        .unwrap_or_default();
    assert!(!after.contains(&"lighthouse after bob left"), "{context}");

    // Forgotten rooms are not searched any more.
    let (status, _) =
        server.post_as(&bob, &format!("/_matrix/client/v3/rooms/{room}/forget"), json!({})).await;
    assert_eq!(status, 200);
    let found = search(&server, &bob, json!({"search_term": "lighthouse"})).await;
    assert_eq!(found["count"], 0);
    // Carol, still joined, sees from her join on.
    let found =
        search(&server, &carol, json!({"search_term": "lighthouse", "order_by": "recent"})).await;
    assert_eq!(result_ids(&found).len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn no_results_is_an_empty_list() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    // No rooms at all, then a room without a match.
    let found = search(&server, &alice, json!({"search_term": "nothing"})).await;
    assert_eq!(found["results"], json!([]), "{found}");
    assert!(found["highlights"].is_array(), "{found}");
    let room = create_room(&server, &alice, json!({})).await;
    send_text(&server, &alice, &room, "s1", "something else").await;
    let found = search(&server, &alice, json!({"search_term": "absent"})).await;
    assert_eq!(found["results"], json!([]), "{found}");
    server.stop().await;
}
