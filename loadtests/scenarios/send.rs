//! `send`: many senders across many rooms. Closed loop (`--concurrency` sends in flight) for
//! peak throughput, or open loop (`--rate`) for latency at a chosen load; then every member's
//! /sync is checked for every acknowledged message of its rooms.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{sync::Semaphore, task::JoinSet};

use crate::{
    cli::SendArgs,
    client::Api,
    error::Result,
    progress::Progress,
    report::{Measurement, ScenarioResult},
    scenarios::{Ctx, cpu_per_1000, message, observe, require, room_body, spread, stop_sampler},
    tasks::{partition, run_bounded},
    world::{RoomRec, World},
};

/// One acknowledged message.
struct Sent {
    room: usize,
    event_id: String,
    latency_ms: f64,
}

pub(crate) async fn run(ctx: &Ctx, world: &mut World, args: &SendArgs) -> Result<ScenarioResult> {
    require(
        args.rooms > 0 && args.messages > 0 && args.concurrency > 0,
        "--rooms, --messages and --concurrency must be positive",
    )?;
    require(
        args.members_per_room > 0 && args.members_per_room <= args.users,
        "--members-per-room must be between 1 and --users",
    )?;
    if let Some(rate) = args.rate {
        require(rate > 0.0 && rate.is_finite(), "--rate must be positive")?;
    }
    let setup_started = Instant::now();
    let users = world.ensure_pool(ctx, "send", args.users).await?;
    let set = format!("send-u{}-m{}", args.users, args.members_per_room);
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
            |i| room_body("public_chat", &format!("send room {i}")),
        )
        .await?;
    // Everyone who is in one of the rooms verifies at the end.
    let mut member_ids: Vec<&str> =
        rooms.iter().flat_map(|room| room.members.iter().map(String::as_str)).collect();
    member_ids.sort_unstable();
    member_ids.dedup();
    let members: Vec<_> =
        users.iter().filter(|user| member_ids.binary_search(&user.id()).is_ok()).cloned().collect();
    let sinces = observe::since_tokens(ctx, &members).await?;
    let setup_s = setup_started.elapsed().as_secs_f64();

    let rooms = Arc::new(rooms);
    let sampler = ctx.sampler()?;
    let deadline = ctx.measure_deadline();
    let started = Instant::now();
    let SendOutcome { sent, failed, examples, late } = match args.rate {
        None => closed_loop(ctx, world, &rooms, args, deadline).await,
        Some(rate) => open_loop(ctx, world, &rooms, args, rate, deadline).await,
    };
    let duration_s = started.elapsed().as_secs_f64();
    let resources = stop_sampler(sampler).await;

    let mut expected: HashMap<&str, Vec<String>> = HashMap::new();
    for s in &sent {
        expected.entry(rooms[s.room].room_id.as_str()).or_default().push(s.event_id.clone());
    }
    let checks = members
        .iter()
        .zip(sinces)
        .map(|(user, since)| observe::Check {
            user: user.clone(),
            since,
            expected: rooms
                .iter()
                .filter(|room| room.members.iter().any(|m| m == user.id()))
                .filter_map(|room| {
                    expected
                        .get(room.room_id.as_str())
                        .map(|ids| (room.room_id.clone(), ids.clone()))
                })
                .collect(),
        })
        .collect();
    let verification = observe::verify(ctx, checks).await;

    let count = sent.len() as u64;
    let mode = args.rate.map_or_else(
        || format!("closed loop, {} in flight", args.concurrency),
        |rate| format!("open loop at {rate}/s"),
    );
    let measurement = Measurement::new(
        "send",
        "events",
        failed,
        duration_s,
        sent.iter().map(|s| s.latency_ms).collect(),
    )
    .with("rooms", rooms.len() as f64)
    .with("senders", members.len() as f64);
    let mut notes = vec![mode];
    if late > 0 {
        notes.push(format!(
            "{late} sends started more than 10 ms after their scheduled time (in-flight limit or a busy harness); their latency counts from the scheduled time"
        ));
    }
    notes.extend(examples.into_iter().map(|e| format!("send error: {e}")));
    Ok(ScenarioResult {
        name: "send".to_owned(),
        params: serde_json::to_value(args)?,
        setup_s,
        measurements: vec![measurement],
        missed_deliveries: 0,
        verification,
        cpu_s_per_1000_events: cpu_per_1000(resources.as_ref(), count),
        resources,
        rate_limited_retries: 0,
        errors: failed,
        notes,
    })
}

/// The i-th message goes to room `i % rooms`, sent by one of that room's members in turn.
fn sender_of<'a>(world: &'a World, room: &RoomRec, i: usize, rooms: usize) -> Option<&'a str> {
    let members = room.members.len().max(1);
    room.members.get((i / rooms) % members).and_then(|id| world.user(id)).map(|user| user.token())
}

struct SendOutcome {
    sent: Vec<Sent>,
    failed: u64,
    examples: Vec<String>,
    /// Open loop: sends that started more than 10 ms after their scheduled time.
    late: u64,
}

struct Plan {
    room: usize,
    token: String,
    txn: String,
    content: serde_json::Value,
}

async fn closed_loop(
    ctx: &Ctx,
    world: &World,
    rooms: &Arc<Vec<RoomRec>>,
    args: &SendArgs,
    deadline: Instant,
) -> SendOutcome {
    let plans: Arc<Vec<Plan>> = Arc::new(
        (0..args.messages)
            .filter_map(|i| {
                let room = i % rooms.len();
                let token = sender_of(world, &rooms[room], i, rooms.len())?.to_owned();
                Some(Plan { room, token, txn: ctx.txn(), content: message(ctx, i) })
            })
            .collect(),
    );
    let api = ctx.api.clone();
    let rooms_for_jobs = Arc::clone(rooms);
    let jobs = Arc::clone(&plans);
    let results = run_bounded("sending", plans.len(), args.concurrency, deadline, move |i| {
        let api = api.clone();
        let jobs = Arc::clone(&jobs);
        let rooms = Arc::clone(&rooms_for_jobs);
        async move {
            let plan = &jobs[i];
            let started = Instant::now();
            let event_id = api
                .send_message(&plan.token, &rooms[plan.room].room_id, &plan.txn, &plan.content)
                .await?;
            Ok(Sent {
                room: plan.room,
                event_id,
                latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            })
        }
    })
    .await;
    let outcome = partition(results);
    let unplanned = (args.messages - plans.len()) as u64;
    SendOutcome {
        sent: outcome.ok.into_iter().map(|(_, sent)| sent).collect(),
        failed: outcome.failed + unplanned,
        examples: outcome.examples,
        late: 0,
    }
}

async fn open_loop(
    ctx: &Ctx,
    world: &World,
    rooms: &Arc<Vec<RoomRec>>,
    args: &SendArgs,
    rate: f64,
    deadline: Instant,
) -> SendOutcome {
    let progress = Progress::start(format!("sending at {rate}/s"), args.messages);
    let permits = Arc::new(Semaphore::new(args.max_in_flight.max(1)));
    let mut tasks = JoinSet::new();
    let started = tokio::time::Instant::now();
    let mut late = 0u64;
    let mut unsent = 0u64;
    for i in 0..args.messages {
        let scheduled = started + Duration::from_secs_f64(i as f64 / rate);
        if scheduled.into_std() >= deadline {
            unsent = (args.messages - i) as u64;
            break;
        }
        tokio::time::sleep_until(scheduled).await;
        let room = i % rooms.len();
        let Some(token) = sender_of(world, &rooms[room], i, rooms.len()).map(str::to_owned) else {
            unsent += 1;
            continue;
        };
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { break };
        if scheduled.elapsed() > Duration::from_millis(10) {
            late += 1;
        }
        let api: Api = ctx.api.clone();
        let room_id = rooms[room].room_id.clone();
        let txn = ctx.txn();
        let content = message(ctx, i);
        let progress = Arc::clone(&progress);
        let remaining = deadline.saturating_duration_since(Instant::now());
        tasks.spawn(async move {
            let result =
                tokio::time::timeout(remaining, api.send_message(&token, &room_id, &txn, &content))
                    .await;
            drop(permit);
            // Latency from the scheduled start: waiting for a permit counts.
            let latency_ms = scheduled.elapsed().as_secs_f64() * 1000.0;
            let result = match result {
                Ok(Ok(event_id)) => Ok(Sent { room, event_id, latency_ms }),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("unfinished at the deadline".to_owned()),
            };
            progress.add(result.is_ok());
            result
        });
    }
    let mut sent = Vec::new();
    let mut failed = unsent;
    let mut examples = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(s)) => sent.push(s),
            Ok(Err(error)) => {
                failed += 1;
                if examples.len() < 5 {
                    examples.push(error);
                }
            }
            Err(error) => {
                failed += 1;
                examples.push(format!("task failed: {error}"));
            }
        }
    }
    progress.finish();
    SendOutcome { sent, failed, examples, late }
}
