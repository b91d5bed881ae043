//! `many-rooms`: a large number of rooms (created once, reused with `--world-dir`), then
//! rounds of activity in a random fraction of them: members send, a few members of the
//! active rooms long-poll. Throughput, send and delivery latency, and the server's RSS.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use rand::seq::index::sample;

use crate::{
    cli::ManyRoomsArgs,
    error::Result,
    report::{Measurement, ScenarioResult},
    scenarios::{
        Ctx, cpu_per_1000, message, observe, observe::Followers, require, room_body, spread,
        stop_sampler,
    },
    tasks::{partition, run_bounded},
    world::World,
};

struct Sent {
    room: usize,
    event_id: String,
    started: Instant,
    latency_ms: f64,
}

struct Plan {
    room: usize,
    room_id: String,
    token: String,
    txn: String,
    content: serde_json::Value,
}

pub(crate) async fn run(
    ctx: &Ctx,
    world: &mut World,
    args: &ManyRoomsArgs,
) -> Result<ScenarioResult> {
    require(
        args.rooms > 0 && args.rounds > 0 && args.concurrency > 0,
        "--rooms, --rounds and --concurrency must be positive",
    )?;
    require(
        args.members_per_room > 0 && args.members_per_room <= args.users,
        "--members-per-room must be between 1 and --users",
    )?;
    require(
        args.active_fraction > 0.0 && args.active_fraction <= 1.0,
        "--active-fraction must be in (0, 1]",
    )?;
    let setup_started = Instant::now();
    let users = world.ensure_pool(ctx, "many", args.users).await?;
    let set = format!("many-u{}-m{}", args.users, args.members_per_room);
    let rooms = world
        .ensure_rooms(
            ctx,
            &set,
            args.rooms,
            |i| {
                spread(i, users.len(), args.members_per_room)
                    .into_iter()
                    .map(|u| users[u].clone())
                    .collect()
            },
            |i| room_body("public_chat", &format!("many-rooms room {i}")),
        )
        .await?;
    let index_of: HashMap<&str, usize> =
        users.iter().enumerate().map(|(i, u)| (u.id(), i)).collect();
    // Every user's `since` from before the activity, for the final verification.
    let sinces = observe::since_tokens(ctx, &users).await?;
    let setup_s = setup_started.elapsed().as_secs_f64();

    let active_per_round =
        ((args.rooms as f64 * args.active_fraction).ceil() as usize).clamp(1, args.rooms);
    let sampler = ctx.sampler()?;
    let deadline = ctx.measure_deadline();
    let started = Instant::now();
    let mut sent_all: Vec<Sent> = Vec::new();
    let mut send_errors = 0u64;
    let mut delivery_ms = Vec::new();
    let mut missed = 0u64;
    let mut follower_syncs = 0u64;
    let mut follower_errors = 0u64;
    let mut notes = Vec::new();
    let mut message_index = 0usize;
    let mut send_seconds = 0.0;
    for round in 0..args.rounds {
        if Instant::now() >= deadline {
            notes.push(format!("stopped after {round} rounds at --max-duration"));
            break;
        }
        let active: Vec<usize> =
            sample(&mut rand::thread_rng(), rooms.len(), active_per_round).into_vec();
        // A few members of the active rooms long-poll during the round.
        let mut syncers: Vec<usize> = Vec::new();
        'pick: for room in &active {
            for member in &rooms[*room].members {
                if syncers.len() >= args.syncers {
                    break 'pick;
                }
                if let Some(&u) = index_of.get(member.as_str())
                    && !syncers.contains(&u)
                {
                    syncers.push(u);
                }
            }
        }
        let syncer_users: Vec<_> = syncers.iter().map(|u| users[*u].clone()).collect();
        let round_sinces = observe::since_tokens(ctx, &syncer_users).await?;
        let watching = Followers::start(
            &ctx.api,
            syncer_users.iter().cloned().zip(round_sinces).collect(),
            args.sync_timeout,
            deadline,
        );
        tokio::time::sleep(Duration::from_secs_f64(args.settle_seconds.max(0.0))).await;

        let mut plans = Vec::new();
        for n in 0..args.messages_per_room {
            for room in &active {
                let record = &rooms[*room];
                let member = &record.members[n % record.members.len().max(1)];
                let Some(&u) = index_of.get(member.as_str()) else { continue };
                plans.push(Plan {
                    room: *room,
                    room_id: record.room_id.clone(),
                    token: users[u].token().to_owned(),
                    txn: ctx.txn(),
                    content: message(ctx, message_index),
                });
                message_index += 1;
            }
        }
        let plans = Arc::new(plans);
        let jobs = Arc::clone(&plans);
        let api = ctx.api.clone();
        let round_started = Instant::now();
        let label = format!(
            "round {}/{}: {} messages in {} rooms",
            round + 1,
            args.rounds,
            plans.len(),
            active.len()
        );
        let results = run_bounded(&label, plans.len(), args.concurrency, deadline, move |i| {
            let api = api.clone();
            let jobs = Arc::clone(&jobs);
            async move {
                let plan = &jobs[i];
                let started = Instant::now();
                let event_id =
                    api.send_message(&plan.token, &plan.room_id, &plan.txn, &plan.content).await?;
                Ok(Sent {
                    room: plan.room,
                    event_id,
                    started,
                    latency_ms: started.elapsed().as_secs_f64() * 1000.0,
                })
            }
        })
        .await;
        send_seconds += round_started.elapsed().as_secs_f64();
        let outcome = partition(results);
        send_errors += outcome.failed;
        notes.extend(outcome.examples.into_iter().map(|e| format!("send error: {e}")));
        let sent: Vec<Sent> = outcome.ok.into_iter().map(|(_, s)| s).collect();

        // What each syncer must see in this round.
        let mut by_room: HashMap<usize, Vec<&Sent>> = HashMap::new();
        for s in &sent {
            by_room.entry(s.room).or_default().push(s);
        }
        let expected: Vec<Vec<&Sent>> = syncer_users
            .iter()
            .map(|user| {
                by_room
                    .iter()
                    .filter(|(room, _)| rooms[**room].members.iter().any(|m| m == user.id()))
                    .flat_map(|(_, events)| events.iter().copied())
                    .collect()
            })
            .collect();
        let ids: Vec<Vec<&str>> =
            expected.iter().map(|e| e.iter().map(|s| s.event_id.as_str()).collect()).collect();
        let drain =
            (Instant::now() + Duration::from_secs_f64(args.drain_seconds.max(0.0))).min(deadline);
        watching.wait_for(&ids, drain).await;
        let (seen, totals) = watching.stop().await;
        follower_syncs += totals.syncs;
        follower_errors += totals.errors;
        for (events, seen) in expected.iter().zip(&seen) {
            for s in events {
                match seen.get(&s.event_id) {
                    Some(at) => delivery_ms
                        .push(at.saturating_duration_since(s.started).as_secs_f64() * 1000.0),
                    None => missed += 1,
                }
            }
        }
        sent_all.extend(sent);
    }
    let duration_s = started.elapsed().as_secs_f64();
    let resources = stop_sampler(sampler).await;

    // Every member of every room that got messages checks its /sync since before round 1.
    let mut expected: HashMap<usize, Vec<String>> = HashMap::new();
    for s in &sent_all {
        expected.entry(s.room).or_default().push(s.event_id.clone());
    }
    let mut per_user: HashMap<usize, HashMap<String, Vec<String>>> = HashMap::new();
    for (room, ids) in &expected {
        for member in &rooms[*room].members {
            if let Some(&u) = index_of.get(member.as_str()) {
                per_user.entry(u).or_default().insert(rooms[*room].room_id.clone(), ids.clone());
            }
        }
    }
    let checked: HashSet<usize> = per_user.keys().copied().collect();
    let checks = per_user
        .into_iter()
        .map(|(u, expected)| observe::Check {
            user: users[u].clone(),
            since: sinces[u].clone(),
            expected,
        })
        .collect();
    let verification = observe::verify(ctx, checks).await;

    let count = sent_all.len() as u64;
    let send = Measurement::new(
        "send",
        "events",
        send_errors,
        send_seconds,
        sent_all.iter().map(|s| s.latency_ms).collect(),
    )
    .with("rooms_total", rooms.len() as f64)
    .with("active_rooms_per_round", active_per_round as f64);
    let delivery = Measurement::new("delivery", "deliveries", missed, duration_s, delivery_ms)
        .with("missed", missed as f64)
        .with("follower_syncs", follower_syncs as f64)
        .with("follower_sync_errors", follower_errors as f64)
        .with("members_verified", checked.len() as f64);
    notes.push(
        "send rate is over the send phases only; delivery rate over the whole measured phase"
            .to_owned(),
    );
    Ok(ScenarioResult {
        name: "many-rooms".to_owned(),
        params: serde_json::to_value(args)?,
        setup_s,
        measurements: vec![send, delivery],
        missed_deliveries: missed,
        verification,
        cpu_s_per_1000_events: cpu_per_1000(resources.as_ref(), count),
        resources,
        rate_limited_retries: 0,
        errors: send_errors + follower_errors,
        notes,
    })
}
