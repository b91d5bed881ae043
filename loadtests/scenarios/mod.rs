//! The scenarios (one file each) and what they share: the run context, member spreading,
//! message content and transaction IDs.

mod create_rooms;
mod fanout;
mod idle_polls;
mod initial_sync;
mod join;
mod many_rooms;
mod media;
pub(crate) mod observe;
mod send;

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    cli::Scenario,
    client::Api,
    error::{Error, Result},
    report::ScenarioResult,
    sampler::{Resources, Sampler},
    world::World,
};

/// What every scenario needs besides the world.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) api: Api,
    pub(crate) url: reqwest::Url,
    pub(crate) registration_token: Option<String>,
    pub(crate) setup_concurrency: usize,
    pub(crate) setup_deadline: Instant,
    pub(crate) max_duration: Duration,
    pub(crate) server_pid: Option<u32>,
    /// Random per run: transaction IDs and fresh names.
    pub(crate) run_id: String,
    txn_counter: AtomicU64,
}

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        api: Api,
        url: reqwest::Url,
        registration_token: Option<String>,
        setup_concurrency: usize,
        setup_deadline: Instant,
        max_duration: Duration,
        server_pid: Option<u32>,
        run_id: String,
    ) -> Self {
        Self {
            api,
            url,
            registration_token,
            setup_concurrency: setup_concurrency.max(1),
            setup_deadline,
            max_duration,
            server_pid,
            run_id,
            txn_counter: AtomicU64::new(0),
        }
    }

    /// A transaction ID unique within this run.
    pub(crate) fn txn(&self) -> String {
        format!("lt{}-{}", self.run_id, self.txn_counter.fetch_add(1, Ordering::Relaxed))
    }

    /// Deadline of a measured phase starting now.
    pub(crate) fn measure_deadline(&self) -> Instant {
        Instant::now() + self.max_duration
    }

    /// Starts the resource sampler if `--server-pid` was given.
    pub(crate) fn sampler(&self) -> Result<Option<Sampler>> {
        self.server_pid.map(Sampler::start).transpose()
    }
}

/// Stops an optional sampler.
pub(crate) async fn stop_sampler(sampler: Option<Sampler>) -> Option<Resources> {
    match sampler {
        Some(sampler) => Some(sampler.stop().await),
        None => None,
    }
}

/// Indices of `members` distinct users out of `users` for the i-th room, spread evenly.
pub(crate) fn spread(i: usize, users: usize, members: usize) -> Vec<usize> {
    let stride = (users / members.max(1)).max(1);
    (0..members.min(users)).map(|k| (i + k * stride) % users).collect()
}

/// The content of the i-th load-test message.
pub(crate) fn message(ctx: &Ctx, i: usize) -> Value {
    json!({
        "msgtype": "m.text",
        "body": format!("load test message {i} of run {}", ctx.run_id),
    })
}

/// The createRoom request of a scenario room.
pub(crate) fn room_body(preset: &str, name: &str) -> Value {
    json!({ "preset": preset, "name": name, "visibility": "private" })
}

pub(crate) fn require(condition: bool, what: &str) -> Result<()> {
    if condition { Ok(()) } else { Err(Error::new(what.to_owned())) }
}

/// Server CPU seconds per 1,000 events.
pub(crate) fn cpu_per_1000(resources: Option<&Resources>, events: u64) -> Option<f64> {
    resources.filter(|_| events > 0).map(|r| r.cpu_s / (events as f64 / 1000.0))
}

pub(crate) async fn run(
    ctx: &Ctx,
    world: &mut World,
    scenario: &Scenario,
) -> Result<ScenarioResult> {
    match scenario {
        Scenario::Send(args) => send::run(ctx, world, args).await,
        Scenario::Fanout(args) => fanout::run(ctx, world, args).await,
        Scenario::ManyRooms(args) => many_rooms::run(ctx, world, args).await,
        Scenario::InitialSync(args) => initial_sync::run(ctx, world, args).await,
        Scenario::Join(args) => join::run(ctx, world, args).await,
        Scenario::CreateRooms(args) => create_rooms::run(ctx, world, args).await,
        Scenario::Media(args) => media::run(ctx, world, args).await,
        Scenario::IdlePolls(args) => idle_polls::run(ctx, world, args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_distinct() {
        for (users, members) in [(200, 3), (3, 3), (10, 1), (5, 4)] {
            for i in 0..50 {
                let mut chosen = spread(i, users, members);
                assert_eq!(chosen.len(), members);
                chosen.sort_unstable();
                chosen.dedup();
                assert_eq!(chosen.len(), members, "{users} {members} {i}");
            }
        }
    }
}
