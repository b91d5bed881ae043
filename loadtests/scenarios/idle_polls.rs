//! `idle-polls`: thousands of parked /sync long polls (several per user, same token), held
//! while nothing happens: the server's CPU during the hold should be about zero. Then each
//! user posts one message in its own room and every poll must return with it (wake latency).

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::{
    cli::IdlePollsArgs,
    error::{Error, Result},
    progress,
    report::{Measurement, ScenarioResult},
    sampler,
    scenarios::{Ctx, message, observe, require, room_body, stop_sampler},
    tasks::run_bounded,
    world::World,
};

const POLL_FILTER: &str = r#"{"room":{"timeline":{"limit":10}}}"#;

/// Most requests one poll makes (it polls again after an early return).
const MAX_REPOLLS: usize = 20;

/// Responses one poll received: when, and which timeline event IDs they carried.
type Responses = Arc<Mutex<Vec<(Instant, Vec<String>)>>>;

struct WakePlan {
    token: String,
    room_id: String,
    txn: String,
    content: serde_json::Value,
}

#[derive(Debug, Default)]
struct PollEnd {
    errors: u64,
    first_error: Option<String>,
}

pub(crate) async fn run(
    ctx: &Ctx,
    world: &mut World,
    args: &IdlePollsArgs,
) -> Result<ScenarioResult> {
    require(args.polls > 0 && args.users > 0, "--polls and --users must be positive")?;
    require(args.polls <= 200_000, "--polls is limited to 200000")?;
    require(args.hold_seconds > 0.0, "--hold-seconds must be positive")?;
    require(args.open_rate >= 0.0, "--open-rate must not be negative")?;
    if let Some(limit) = sampler::open_files_limit() {
        let needed = args.polls as u64 + 256;
        if needed > limit {
            return Err(Error::new(format!(
                "--polls {} needs about {needed} open files but this process may open {limit} \
                 (`ulimit -n`). Raise it in the shell that starts the harness, and in the one \
                 that starts the server, e.g. `ulimit -n 65536`, or lower --polls.",
                args.polls
            )));
        }
    }
    let setup_started = Instant::now();
    let users = world.ensure_pool(ctx, "idle", args.users).await?;
    let rooms = world
        .ensure_rooms(
            ctx,
            &format!("idle-u{}", args.users),
            args.users,
            |i| vec![users[i].clone()],
            |i| room_body("private_chat", &format!("idle room {i}")),
        )
        .await?;
    let sinces = observe::since_tokens(ctx, &users).await?;
    let setup_s = setup_started.elapsed().as_secs_f64();
    let port = ctx.url.port_or_known_default().unwrap_or(80);

    let sampler = ctx.sampler()?;
    let deadline = ctx.measure_deadline();
    let mut notes = Vec::new();
    // The polls get connections of their own: the server side of exactly that many new
    // connections is what the ramp waits for.
    let poll_api = ctx.api.with_own_pool()?;
    let baseline = sampler::established_to_port(port).unwrap_or(0);
    let (stop, stopped) = watch::channel(false);
    let opened = Instant::now();
    let mut polls = Vec::new();
    let mut tasks = Vec::new();
    for j in 0..args.polls {
        if args.open_rate > 0.0 {
            let due = opened + Duration::from_secs_f64(j as f64 / args.open_rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let user = j % users.len();
        let responses: Responses = Arc::default();
        polls.push((user, Arc::clone(&responses)));
        let api = poll_api.clone();
        let token = users[user].token().to_owned();
        let mut since = sinces[user].clone();
        let mut stopped = stopped.clone();
        let timeout = args.sync_timeout;
        tasks.push(tokio::spawn(async move {
            let mut end = PollEnd::default();
            for _ in 0..MAX_REPOLLS {
                if *stopped.borrow() || Instant::now() >= deadline {
                    break;
                }
                let result = tokio::select! {
                    result = api.sync(&token, Some(&since), POLL_FILTER, timeout) => result,
                    _ = stopped.changed() => break,
                };
                let now = Instant::now();
                match result.and_then(|sync| {
                    let ids: Vec<String> = sync
                        .joined()
                        .iter()
                        .flat_map(|room| {
                            room.timeline
                                .iter()
                                .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
                        })
                        .collect();
                    Ok((sync.next_batch()?, ids))
                }) {
                    Ok((next, ids)) => {
                        responses.lock().unwrap_or_else(PoisonError::into_inner).push((now, ids));
                        since = next;
                    }
                    Err(error) => {
                        end.errors += 1;
                        end.first_error.get_or_insert_with(|| error.to_string());
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(500)) => {}
                            _ = stopped.changed() => break,
                        }
                    }
                }
            }
            end
        }));
    }

    // Wait for the connections (server side of loopback TCP), then let the server settle.
    let ramp_deadline = opened + Duration::from_secs_f64(args.ramp_timeout.max(0.0));
    let mut established = None;
    loop {
        established = sampler::established_to_port(port).or(established);
        let Some(count) = established else {
            notes.push("cannot read /proc/net/tcp: waiting --settle-seconds only".to_owned());
            break;
        };
        if count >= baseline + args.polls || Instant::now() >= ramp_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ramp_s = opened.elapsed().as_secs_f64();
    if let Some(count) = established.filter(|count| *count < baseline + args.polls) {
        notes.push(format!(
            "only {} of {} poll connections were established within --ramp-timeout",
            count.saturating_sub(baseline),
            args.polls
        ));
    }
    progress::note(&format!(
        "{} polls issued; {} new established connections to port {port} after {ramp_s:.1} s",
        args.polls,
        established.map_or_else(|| "?".to_owned(), |c| c.saturating_sub(baseline).to_string())
    ));
    tokio::time::sleep(Duration::from_secs_f64(args.settle_seconds.max(0.0))).await;

    // The hold must end well before the first polls time out.
    let expiry = opened + Duration::from_millis(args.sync_timeout);
    let latest_end = expiry.checked_sub(Duration::from_secs(2)).unwrap_or(expiry).min(deadline);
    let available = latest_end.saturating_duration_since(Instant::now());
    let mut hold = Duration::from_secs_f64(args.hold_seconds);
    if hold > available {
        notes.push(format!(
            "hold shortened from {:.1} s to {:.1} s so it ends before the polls time out (raise --sync-timeout)",
            hold.as_secs_f64(),
            available.as_secs_f64()
        ));
        hold = available;
    }
    if hold.is_zero() {
        let _ = stop.send(true);
        return Err(Error::new(
            "no time left to hold the polls: raise --sync-timeout or lower --ramp-timeout/--settle-seconds",
        ));
    }
    progress::note(&format!("holding {} polls for {:.1} s", args.polls, hold.as_secs_f64()));
    let server_before = ctx.server_pid.map(sampler::read).transpose()?;
    let own_before = sampler::read(std::process::id()).ok();
    let hold_started = Instant::now();
    tokio::time::sleep(hold).await;
    let hold_ended = Instant::now();
    let server_after = ctx.server_pid.map(sampler::read).transpose()?;
    let own_after = sampler::read(std::process::id()).ok();
    let hold_s = hold_ended.duration_since(hold_started).as_secs_f64();

    // Wake: one message per user into its own room.
    let api = ctx.api.clone();
    let wake_plans: Arc<Vec<WakePlan>> = Arc::new(
        (0..users.len())
            .map(|u| WakePlan {
                token: users[u].token().to_owned(),
                room_id: rooms[u].room_id.clone(),
                txn: ctx.txn(),
                content: message(ctx, u),
            })
            .collect(),
    );
    let jobs = Arc::clone(&wake_plans);
    let wake_started = Instant::now();
    let results = run_bounded("wake messages", users.len(), 32, deadline, move |u| {
        let api = api.clone();
        let jobs = Arc::clone(&jobs);
        async move {
            let plan = &jobs[u];
            let started = Instant::now();
            let event_id =
                api.send_message(&plan.token, &plan.room_id, &plan.txn, &plan.content).await?;
            Ok((event_id, started))
        }
    })
    .await;
    let wakes: Vec<Option<(String, Instant)>> = results.into_iter().map(Result::ok).collect();
    let wake_failures = wakes.iter().filter(|w| w.is_none()).count() as u64;
    let delivered = |user: usize, responses: &Responses| -> Option<Instant> {
        let (id, _) = wakes.get(user)?.as_ref()?;
        let responses = responses.lock().unwrap_or_else(PoisonError::into_inner);
        responses.iter().find(|(_, ids)| ids.contains(id)).map(|(at, _)| *at)
    };
    let drain =
        (Instant::now() + Duration::from_secs_f64(args.drain_seconds.max(0.0))).min(deadline);
    loop {
        let all = polls.iter().all(|(user, responses)| {
            wakes[*user].is_none() || delivered(*user, responses).is_some()
        });
        if all || Instant::now() >= drain {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wake_s = wake_started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    let mut poll_errors = 0u64;
    for task in tasks {
        if let Ok(Ok(end)) = tokio::time::timeout(Duration::from_secs(10), task).await {
            poll_errors += end.errors;
            if let Some(error) = end.first_error
                && notes.len() < 8
            {
                notes.push(format!("poll error: {error}"));
            }
        }
    }
    let resources = stop_sampler(sampler).await;

    let mut wake_ms = Vec::new();
    let mut missed = 0u64;
    let mut early_before_hold = 0u64;
    let mut early_during_hold = 0u64;
    for (user, responses) in &polls {
        if let Some(Some((_, sent_at))) = wakes.get(*user) {
            match delivered(*user, responses) {
                Some(at) => {
                    wake_ms.push(at.saturating_duration_since(*sent_at).as_secs_f64() * 1000.0)
                }
                None => missed += 1,
            }
        }
        for (at, _) in responses.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            if *at < hold_started {
                early_before_hold += 1;
            } else if *at < hold_ended {
                early_during_hold += 1;
            }
        }
    }
    if poll_errors > 0 {
        notes.push("polls failed: if connections were refused or reset, check `ulimit -n` of both processes (e.g. 65536) and the server's in-flight request limit".to_owned());
    }

    // Each user's own sync since before must hold its wake message.
    let checks = users
        .iter()
        .enumerate()
        .filter_map(|(u, user)| {
            let (id, _) = wakes.get(u)?.as_ref()?;
            Some(observe::Check {
                user: user.clone(),
                since: sinces[u].clone(),
                expected: [(rooms[u].room_id.clone(), vec![id.clone()])].into_iter().collect(),
            })
        })
        .collect();
    let verification = observe::verify(ctx, checks).await;

    let open = Measurement::new("open", "polls", poll_errors, ramp_s, Vec::new())
        .counting(args.polls as u64)
        .with("polls", args.polls as f64)
        .with("new_connections", established.map_or(-1.0, |c| c.saturating_sub(baseline) as f64));
    let mut held = Measurement::new("hold", "polls", 0, hold_s, Vec::new())
        .counting(args.polls as u64)
        .with("early_returns_before_hold", early_before_hold as f64)
        .with("early_returns_during_hold", early_during_hold as f64);
    if let (Some(before), Some(after)) = (server_before, server_after) {
        let cpu = (after.cpu_s - before.cpu_s).max(0.0);
        held = held
            .with("server_cpu_s", cpu)
            .with("server_cpu_ms_per_s", cpu * 1000.0 / hold_s.max(1e-9))
            .with("server_rss_mb", after.rss_kb as f64 / 1024.0);
    } else {
        notes.push("no --server-pid: the server's CPU during the hold was not measured".to_owned());
    }
    if let (Some(before), Some(after)) = (own_before, own_after) {
        held = held.with("harness_cpu_s", (after.cpu_s - before.cpu_s).max(0.0));
    }
    let wake = Measurement::new("wake", "polls", missed, wake_s, wake_ms)
        .with("missed", missed as f64)
        .with("wake_messages", (users.len() as u64 - wake_failures) as f64)
        .with("wake_message_errors", wake_failures as f64);
    Ok(ScenarioResult {
        name: "idle-polls".to_owned(),
        params: serde_json::to_value(args)?,
        setup_s,
        measurements: vec![open, held, wake],
        missed_deliveries: missed,
        verification,
        cpu_s_per_1000_events: None,
        resources,
        rate_limited_retries: 0,
        errors: poll_errors + wake_failures,
        notes,
    })
}
