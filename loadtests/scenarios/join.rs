//! `join`: many users joining one fresh public room concurrently, then one fresh user joining
//! many fresh public rooms. Join rates and latencies; the joins must show in /sync (the
//! room creator's for the first, the joiner's own for the second).

use std::{collections::HashSet, sync::Arc, time::Instant};

use crate::{
    cli::JoinArgs,
    client::Api,
    error::{Error, Result},
    report::{Measurement, ScenarioResult, Verification},
    scenarios::{Ctx, observe, require, room_body, stop_sampler},
    tasks::{partition, run_bounded},
    world::{UserRec, World},
};

/// `state_key`s of join memberships in a joined room's timeline and state of one /sync.
fn joins_in(events: &[serde_json::Value], into: &mut HashSet<String>) {
    for event in events {
        if event["type"] == "m.room.member"
            && event["content"]["membership"] == "join"
            && let Some(user) = event["state_key"].as_str()
        {
            into.insert(user.to_owned());
        }
    }
}

/// Most `/messages` pages read when looking for memberships behind a limited timeline.
const MAX_PAGES: usize = 100;

/// Checks that each of `expected` shows as joined in `room_id` in `viewer`'s /sync since
/// `since` (state or timeline; behind a limited timeline also `/messages`).
async fn check_joins(
    api: &Api,
    viewer: &UserRec,
    since: &str,
    room_id: &str,
    expected: &[String],
    verification: &mut Verification,
) {
    verification.members_checked += 1;
    verification.expected += expected.len() as u64;
    let sync = match api.sync(viewer.token(), Some(since), observe::TIMELINE_FILTER, 0).await {
        Ok(sync) => sync,
        Err(error) => {
            verification.check_errors += 1;
            verification.example(format!("sync of {}: {error}", viewer.id()));
            return;
        }
    };
    let mut in_sync = HashSet::new();
    let joined = sync.joined();
    let room = joined.iter().find(|room| room.room_id == room_id);
    if let Some(room) = room {
        joins_in(room.timeline, &mut in_sync);
        joins_in(room.state, &mut in_sync);
    }
    let mut outstanding: HashSet<&str> =
        expected.iter().map(String::as_str).filter(|user| !in_sync.contains(*user)).collect();
    verification.found_in_sync += (expected.len() - outstanding.len()) as u64;
    if let Some(mut from) = room.filter(|r| r.limited).and_then(|r| r.prev_batch).map(str::to_owned)
    {
        for _ in 0..MAX_PAGES {
            if outstanding.is_empty() {
                break;
            }
            let page = match api.messages_backwards(viewer.token(), room_id, &from, 100).await {
                Ok(page) => page,
                Err(error) => {
                    verification.check_errors += 1;
                    verification.example(format!("/messages of {room_id}: {error}"));
                    break;
                }
            };
            let chunk = page["chunk"].as_array().map_or(&[][..], Vec::as_slice);
            let mut found = HashSet::new();
            joins_in(chunk, &mut found);
            for user in &found {
                if outstanding.remove(user.as_str()) {
                    verification.found_via_messages += 1;
                }
            }
            match page["end"].as_str() {
                Some(end) if !chunk.is_empty() && end != from => from = end.to_owned(),
                _ => break,
            }
        }
    }
    verification.missing += outstanding.len() as u64;
    for user in outstanding {
        verification.example(format!("join of {user} in {room_id} not in {}'s sync", viewer.id()));
    }
}

pub(crate) async fn run(ctx: &Ctx, world: &mut World, args: &JoinArgs) -> Result<ScenarioResult> {
    require(
        args.users > 0 && args.rooms > 0 && args.concurrency > 0,
        "--users, --rooms and --concurrency must be positive",
    )?;
    let setup_started = Instant::now();
    let creator = world
        .ensure_pool(ctx, "join-creator", 1)
        .await?
        .pop()
        .ok_or_else(|| Error::new("no creator"))?;
    let users = world.ensure_pool(ctx, "join", args.users).await?;
    // Fresh rooms every run: a join into a room one is already in changes nothing.
    let room_one = ctx
        .api
        .create_room(
            creator.token(),
            room_body("public_chat", &format!("join target {}", ctx.run_id)),
        )
        .await?;
    let api = ctx.api.clone();
    let token = creator.token().to_owned();
    let run_id = ctx.run_id.clone();
    let created = run_bounded(
        &format!("creating {} rooms to join", args.rooms),
        args.rooms,
        ctx.setup_concurrency,
        ctx.setup_deadline,
        move |i| {
            let api = api.clone();
            let token = token.clone();
            let body = room_body("public_chat", &format!("join room {i} of {run_id}"));
            async move { api.create_room(&token, body).await }
        },
    )
    .await;
    let many_rooms: Vec<String> = created.into_iter().collect::<Result<_>>()?;
    let joiner_name = format!("lt{}_joiner_{}", world.id, ctx.run_id.to_ascii_lowercase());
    let joiner_session =
        ctx.api.register(&joiner_name, &world.password, ctx.registration_token.as_deref()).await?;
    let joiner = UserRec { username: joiner_name, session: joiner_session };
    let creator_since = observe::since_tokens(ctx, std::slice::from_ref(&creator)).await?;
    let joiner_since = observe::since_tokens(ctx, std::slice::from_ref(&joiner)).await?;
    let setup_s = setup_started.elapsed().as_secs_f64();

    let sampler = ctx.sampler()?;
    let deadline = ctx.measure_deadline();
    let mut notes = Vec::new();

    // Many users into one room.
    let shared_users = Arc::new(users.clone());
    let api = ctx.api.clone();
    let target = room_one.clone();
    let started = Instant::now();
    let results = run_bounded(
        &format!("{} users joining one room", users.len()),
        users.len(),
        args.concurrency,
        deadline,
        move |i| {
            let api = api.clone();
            let users = Arc::clone(&shared_users);
            let target = target.clone();
            async move {
                let t = Instant::now();
                api.join(users[i].token(), &target).await?;
                Ok(t.elapsed().as_secs_f64() * 1000.0)
            }
        },
    )
    .await;
    let one_room_s = started.elapsed().as_secs_f64();
    let one_room = partition(results);
    notes.extend(one_room.examples.iter().map(|e| format!("join error: {e}")));
    let joined_users: Vec<String> =
        one_room.ok.iter().map(|(i, _)| users[*i].id().to_owned()).collect();

    // One user into many rooms.
    let rooms = Arc::new(many_rooms);
    let api = ctx.api.clone();
    let token = joiner.token().to_owned();
    let jobs = Arc::clone(&rooms);
    let started = Instant::now();
    let results = run_bounded(
        &format!("one user joining {} rooms", rooms.len()),
        rooms.len(),
        args.concurrency,
        deadline,
        move |i| {
            let api = api.clone();
            let token = token.clone();
            let jobs = Arc::clone(&jobs);
            async move {
                let t = Instant::now();
                api.join(&token, &jobs[i]).await?;
                Ok(t.elapsed().as_secs_f64() * 1000.0)
            }
        },
    )
    .await;
    let many_rooms_s = started.elapsed().as_secs_f64();
    let many = partition(results);
    notes.extend(many.examples.iter().map(|e| format!("join error: {e}")));
    let resources = stop_sampler(sampler).await;

    let mut verification = Verification::default();
    if let Some(since) = creator_since.first() {
        check_joins(&ctx.api, &creator, since, &room_one, &joined_users, &mut verification).await;
    }
    if let Some(since) = joiner_since.first() {
        // The joiner's own sync must hold every room it joined, with its join.
        match ctx.api.sync(joiner.token(), Some(since), observe::TIMELINE_FILTER, 0).await {
            Ok(sync) => {
                let joined = sync.joined();
                verification.members_checked += 1;
                for (i, _) in &many.ok {
                    verification.expected += 1;
                    let mut members = HashSet::new();
                    if let Some(room) = joined.iter().find(|r| r.room_id == rooms[*i]) {
                        joins_in(room.timeline, &mut members);
                        joins_in(room.state, &mut members);
                    }
                    if members.contains(joiner.id()) {
                        verification.found_in_sync += 1;
                    } else {
                        verification.missing += 1;
                        verification.example(format!(
                            "{} joined {} but its sync does not show it",
                            joiner.id(),
                            rooms[*i]
                        ));
                    }
                }
            }
            Err(error) => {
                verification.check_errors += 1;
                verification.example(format!("sync of {}: {error}", joiner.id()));
            }
        }
    }

    let errors = one_room.failed + many.failed;
    Ok(ScenarioResult {
        name: "join".to_owned(),
        params: serde_json::to_value(args)?,
        setup_s,
        measurements: vec![
            Measurement::new(
                "many-users-one-room",
                "joins",
                one_room.failed,
                one_room_s,
                one_room.ok.into_iter().map(|(_, ms)| ms).collect(),
            ),
            Measurement::new(
                "one-user-many-rooms",
                "joins",
                many.failed,
                many_rooms_s,
                many.ok.into_iter().map(|(_, ms)| ms).collect(),
            ),
        ],
        missed_deliveries: 0,
        verification,
        cpu_s_per_1000_events: None,
        resources,
        rate_limited_retries: 0,
        errors,
        notes,
    })
}
