//! `fanout`: members long-poll /sync while one sender posts at a fixed rate into their rooms
//! (one room with many members, or many rooms with a few each, round-robin). Delivery
//! latency is measured from the start of each send to each member's /sync response that
//! carries the event.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::task::JoinSet;

use crate::{
    cli::FanoutArgs,
    error::Result,
    progress::Progress,
    report::{Measurement, ScenarioResult},
    scenarios::{
        Ctx, cpu_per_1000, message, observe, observe::Followers, require, room_body, stop_sampler,
    },
    world::World,
};

/// One acknowledged message.
struct Sent {
    room: usize,
    event_id: String,
    started: Instant,
    latency_ms: f64,
}

pub(crate) async fn run(ctx: &Ctx, world: &mut World, args: &FanoutArgs) -> Result<ScenarioResult> {
    let pool_size = args.users.unwrap_or(args.members);
    require(args.rooms > 0 && args.messages > 0, "--rooms and --messages must be positive")?;
    require(
        args.members > 0 && args.members <= pool_size,
        "--members must be between 1 and --users",
    )?;
    require(args.rate > 0.0 && args.rate.is_finite(), "--rate must be positive")?;

    let setup_started = Instant::now();
    let users = world.ensure_pool(ctx, "fanout", pool_size).await?;
    let sender = world
        .ensure_pool(ctx, "fanout-sender", 1)
        .await?
        .pop()
        .ok_or_else(|| crate::error::Error::new("no sender"))?;
    let set = format!("fanout-n{}-u{pool_size}", args.members);
    let rooms = world
        .ensure_rooms(
            ctx,
            &set,
            args.rooms,
            |r| {
                let mut members = vec![sender.clone()];
                members.extend(
                    (0..args.members).map(|j| users[(r * args.members + j) % pool_size].clone()),
                );
                members
            },
            |r| room_body("public_chat", &format!("fanout room {r}")),
        )
        .await?;
    // Each user follows once, for all its rooms.
    let mut rooms_of: HashMap<&str, Vec<usize>> = HashMap::new();
    for (index, room) in rooms.iter().enumerate() {
        for member in room.members.iter().filter(|m| *m != sender.id()) {
            rooms_of.entry(member.as_str()).or_default().push(index);
        }
    }
    let followers: Vec<_> =
        users.iter().filter(|u| rooms_of.contains_key(u.id())).cloned().collect();
    let sinces = observe::since_tokens(ctx, &followers).await?;
    let setup_s = setup_started.elapsed().as_secs_f64();

    let sampler = ctx.sampler()?;
    let deadline = ctx.measure_deadline();
    let watching = Followers::start(
        &ctx.api,
        followers.iter().cloned().zip(sinces.iter().cloned()).collect(),
        args.sync_timeout,
        deadline,
    );
    tokio::time::sleep(Duration::from_secs_f64(args.settle_seconds.max(0.0))).await;

    // Open loop: message i starts at i / rate, in room i % rooms.
    let started = Instant::now();
    let progress = Progress::start(format!("sending at {}/s", args.rate), args.messages);
    let mut tasks = JoinSet::new();
    let mut unsent = 0u64;
    let t0 = tokio::time::Instant::now();
    for i in 0..args.messages {
        let scheduled = t0 + Duration::from_secs_f64(i as f64 / args.rate);
        if scheduled.into_std() >= deadline {
            unsent = (args.messages - i) as u64;
            break;
        }
        tokio::time::sleep_until(scheduled).await;
        let room = i % rooms.len();
        let api = ctx.api.clone();
        let token = sender.token().to_owned();
        let room_id = rooms[room].room_id.clone();
        let (txn, content) = (ctx.txn(), message(ctx, i));
        let progress = Arc::clone(&progress);
        let remaining = deadline.saturating_duration_since(Instant::now());
        tasks.spawn(async move {
            let started = Instant::now();
            let result =
                tokio::time::timeout(remaining, api.send_message(&token, &room_id, &txn, &content))
                    .await;
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            progress.add(matches!(result, Ok(Ok(_))));
            match result {
                Ok(Ok(event_id)) => Ok(Sent { room, event_id, started, latency_ms }),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("unfinished at the deadline".to_owned()),
            }
        });
    }
    let mut sent = Vec::new();
    let mut failed = unsent;
    let mut notes = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(s)) => sent.push(s),
            Ok(Err(error)) => {
                failed += 1;
                if notes.len() < 5 {
                    notes.push(format!("send error: {error}"));
                }
            }
            Err(error) => {
                failed += 1;
                notes.push(format!("send task failed: {error}"));
            }
        }
    }
    progress.finish();
    let send_duration_s = started.elapsed().as_secs_f64();

    // What each follower must see, then wait for it (bounded by --drain-seconds).
    let mut events_of_room: Vec<Vec<&Sent>> = (0..rooms.len()).map(|_| Vec::new()).collect();
    for s in &sent {
        events_of_room[s.room].push(s);
    }
    let expected: Vec<Vec<&Sent>> = followers
        .iter()
        .map(|user| {
            rooms_of
                .get(user.id())
                .into_iter()
                .flatten()
                .flat_map(|room| events_of_room[*room].iter().copied())
                .collect()
        })
        .collect();
    let expected_ids: Vec<Vec<&str>> = expected
        .iter()
        .map(|events| events.iter().map(|s| s.event_id.as_str()).collect())
        .collect();
    let drain_deadline =
        (Instant::now() + Duration::from_secs_f64(args.drain_seconds.max(0.0))).min(deadline);
    let drained = watching.wait_for(&expected_ids, drain_deadline).await;
    let (seen, totals) = watching.stop().await;
    let resources = stop_sampler(sampler).await;
    let duration_s = started.elapsed().as_secs_f64();
    if !drained {
        notes.push(format!(
            "deliveries still outstanding after --drain-seconds {}",
            args.drain_seconds
        ));
    }

    let mut delivery_ms = Vec::new();
    let mut missed = 0u64;
    for (events, seen) in expected.iter().zip(&seen) {
        for s in events {
            match seen.get(&s.event_id) {
                Some(at) => {
                    delivery_ms.push(at.saturating_duration_since(s.started).as_secs_f64() * 1000.0)
                }
                None => missed += 1,
            }
        }
    }

    let checks = followers
        .iter()
        .zip(sinces)
        .map(|(user, since)| observe::Check {
            user: user.clone(),
            since,
            expected: rooms_of
                .get(user.id())
                .into_iter()
                .flatten()
                .filter(|room| !events_of_room[**room].is_empty())
                .map(|room| {
                    (
                        rooms[*room].room_id.clone(),
                        events_of_room[*room].iter().map(|s| s.event_id.clone()).collect(),
                    )
                })
                .collect(),
        })
        .collect();
    let verification = observe::verify(ctx, checks).await;

    let count = sent.len() as u64;
    let send = Measurement::new(
        "send",
        "events",
        failed,
        send_duration_s,
        sent.iter().map(|s| s.latency_ms).collect(),
    )
    .with("target_rate_per_s", args.rate);
    let delivery = Measurement::new("delivery", "deliveries", missed, duration_s, delivery_ms)
        .with("missed", missed as f64)
        .with("followers", followers.len() as f64)
        .with("rooms", rooms.len() as f64)
        .with("follower_syncs", totals.syncs as f64)
        .with("follower_sync_errors", totals.errors as f64)
        .with("limited_timelines", totals.limited as f64);
    Ok(ScenarioResult {
        name: "fanout".to_owned(),
        params: serde_json::to_value(args)?,
        setup_s,
        measurements: vec![send, delivery],
        missed_deliveries: missed,
        verification,
        cpu_s_per_1000_events: cpu_per_1000(resources.as_ref(), count),
        resources,
        rate_limited_retries: 0,
        errors: failed + totals.errors,
        notes,
    })
}
