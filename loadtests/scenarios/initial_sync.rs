//! `initial-sync`: one user in many rooms, each with history; times repeated initial /sync
//! requests (no `since`) with an inline filter limiting the timeline, and checks that each
//! response holds every room with its newest history messages.

use std::time::Instant;

use crate::{
    cli::InitialSyncArgs,
    error::{Error, Result},
    progress::Progress,
    report::{Measurement, ScenarioResult, Verification},
    scenarios::{Ctx, require, room_body, stop_sampler},
    world::World,
};

pub(crate) async fn run(
    ctx: &Ctx,
    world: &mut World,
    args: &InitialSyncArgs,
) -> Result<ScenarioResult> {
    require(args.rooms > 0 && args.repeats > 0, "--rooms and --repeats must be positive")?;
    require((1..=100).contains(&args.timeline_limit), "--timeline-limit must be 1..=100")?;
    let setup_started = Instant::now();
    // A user of its own per size, so other scenarios' rooms never show up in its sync.
    let name = format!("isync-r{}-h{}", args.rooms, args.history);
    let user =
        world.ensure_pool(ctx, &name, 1).await?.pop().ok_or_else(|| Error::new("no user"))?;
    world
        .ensure_rooms(
            ctx,
            &name,
            args.rooms,
            |_| vec![user.clone()],
            |i| room_body("private_chat", &format!("history room {i}")),
        )
        .await?;
    let rooms: Vec<_> = world
        .ensure_history(ctx, &name, args.history)
        .await?
        .into_iter()
        .take(args.rooms)
        .collect();
    let setup_s = setup_started.elapsed().as_secs_f64();

    let filter = format!(r#"{{"room":{{"timeline":{{"limit":{}}}}}}}"#, args.timeline_limit);
    let sampler = ctx.sampler()?;
    let deadline = ctx.measure_deadline();
    let started = Instant::now();
    let progress = Progress::start("initial syncs", args.repeats);
    let mut latencies = Vec::new();
    let mut sizes = Vec::new();
    let mut errors = 0u64;
    let mut verification = Verification::default();
    let mut notes = Vec::new();
    for _ in 0..args.repeats {
        if Instant::now() >= deadline {
            notes.push("stopped at --max-duration".to_owned());
            break;
        }
        let t = Instant::now();
        let result = ctx.api.sync(user.token(), None, &filter, 0).await;
        let elapsed_ms = t.elapsed().as_secs_f64() * 1000.0;
        progress.add(result.is_ok());
        let sync = match result {
            Ok(sync) => sync,
            Err(error) => {
                errors += 1;
                verification.check_errors += 1;
                verification.example(format!("initial sync: {error}"));
                continue;
            }
        };
        latencies.push(elapsed_ms);
        sizes.push(sync.bytes as f64);
        // Each room must be there with its newest `limit` history messages.
        let joined = sync.joined();
        verification.members_checked += 1;
        for room in &rooms {
            let want = &room.history[room.history.len().saturating_sub(args.timeline_limit)..];
            verification.expected += want.len() as u64;
            let timeline = joined.iter().find(|r| r.room_id == room.room_id).map(|r| r.timeline);
            for id in want {
                let found = timeline.is_some_and(|events| {
                    events.iter().any(|e| e["event_id"].as_str() == Some(id))
                });
                if found {
                    verification.found_in_sync += 1;
                } else {
                    verification.missing += 1;
                    verification
                        .example(format!("{id} of {} not in the initial sync", room.room_id));
                }
            }
        }
    }
    progress.finish();
    let duration_s = started.elapsed().as_secs_f64();
    let resources = stop_sampler(sampler).await;
    let mean_bytes =
        if sizes.is_empty() { 0.0 } else { sizes.iter().sum::<f64>() / sizes.len() as f64 };
    let measurement = Measurement::new("initial-sync", "syncs", errors, duration_s, latencies)
        .with("rooms", rooms.len() as f64)
        .with("history_per_room", args.history as f64)
        .with("response_bytes_mean", mean_bytes)
        .with("response_bytes_max", sizes.iter().copied().fold(0.0, f64::max));
    Ok(ScenarioResult {
        name: "initial-sync".to_owned(),
        params: serde_json::to_value(args)?,
        setup_s,
        measurements: vec![measurement],
        missed_deliveries: 0,
        verification,
        cpu_s_per_1000_events: None,
        resources,
        rate_limited_retries: 0,
        errors,
        notes,
    })
}
