//! `create-rooms`: room creation throughput and latency with a chosen concurrency, spread
//! over a few users; every created room must be in its creator's /sync.

use std::{collections::HashMap, sync::Arc, time::Instant};

use crate::{
    cli::CreateRoomsArgs,
    error::Result,
    report::{Measurement, ScenarioResult, Verification},
    scenarios::{Ctx, cpu_per_1000, observe, require, room_body, stop_sampler},
    tasks::{partition, run_bounded},
    world::World,
};

pub(crate) async fn run(
    ctx: &Ctx,
    world: &mut World,
    args: &CreateRoomsArgs,
) -> Result<ScenarioResult> {
    require(
        args.count > 0 && args.concurrency > 0 && args.users > 0,
        "--count, --concurrency and --users must be positive",
    )?;
    let setup_started = Instant::now();
    let users = world.ensure_pool(ctx, "create", args.users).await?;
    let sinces = observe::since_tokens(ctx, &users).await?;
    let setup_s = setup_started.elapsed().as_secs_f64();

    let sampler = ctx.sampler()?;
    let deadline = ctx.measure_deadline();
    let shared = Arc::new(users.clone());
    let api = ctx.api.clone();
    let preset = args.preset.clone();
    let run_id = ctx.run_id.clone();
    let started = Instant::now();
    let results = run_bounded(
        &format!("creating {} rooms", args.count),
        args.count,
        args.concurrency,
        deadline,
        move |i| {
            let api = api.clone();
            let users = Arc::clone(&shared);
            let body = room_body(&preset, &format!("created room {i} of {run_id}"));
            async move {
                let t = Instant::now();
                let room_id = api.create_room(users[i % users.len()].token(), body).await?;
                Ok((room_id, t.elapsed().as_secs_f64() * 1000.0))
            }
        },
    )
    .await;
    let duration_s = started.elapsed().as_secs_f64();
    let resources = stop_sampler(sampler).await;
    let outcome = partition(results);

    // Each creator's sync since before must hold all its rooms.
    let mut by_creator: HashMap<usize, Vec<String>> = HashMap::new();
    for (i, (room_id, _)) in &outcome.ok {
        by_creator.entry(i % users.len()).or_default().push(room_id.clone());
    }
    let mut verification = Verification::default();
    for (u, rooms) in &by_creator {
        verification.members_checked += 1;
        verification.expected += rooms.len() as u64;
        match ctx.api.sync(users[*u].token(), Some(&sinces[*u]), observe::LIGHT_FILTER, 0).await {
            Ok(sync) => {
                let joined: Vec<&str> = sync.joined().iter().map(|room| room.room_id).collect();
                for room in rooms {
                    if joined.contains(&room.as_str()) {
                        verification.found_in_sync += 1;
                    } else {
                        verification.missing += 1;
                        verification.example(format!("{room} not in {}'s sync", users[*u].id()));
                    }
                }
            }
            Err(error) => {
                verification.check_errors += 1;
                verification.example(format!("sync of {}: {error}", users[*u].id()));
            }
        }
    }

    let count = outcome.ok.len() as u64;
    let measurement = Measurement::new(
        "create",
        "rooms",
        outcome.failed,
        duration_s,
        outcome.ok.iter().map(|(_, (_, ms))| *ms).collect(),
    );
    Ok(ScenarioResult {
        name: "create-rooms".to_owned(),
        params: serde_json::to_value(args)?,
        setup_s,
        measurements: vec![measurement],
        missed_deliveries: 0,
        verification,
        cpu_s_per_1000_events: cpu_per_1000(resources.as_ref(), count),
        resources,
        rate_limited_retries: 0,
        errors: outcome.failed,
        notes: outcome.examples.into_iter().map(|e| format!("create error: {e}")).collect(),
    })
}
