//! Watching /sync like a client does: `since` tokens taken before a measured phase, live
//! long-polling followers that timestamp every timeline event they receive, and the final
//! verification that every acknowledged event is in each member's /sync (paging
//! `/messages` back from `prev_batch` when a timeline was `limited`).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::{
    client::Api, error::Result, report::Verification, scenarios::Ctx, tasks::run_bounded,
    world::UserRec,
};

/// A filter that leaves out every room: the cheapest way to get a `next_batch`.
pub(crate) const SINCE_FILTER: &str =
    r#"{"room":{"rooms":[]},"presence":{"types":[]},"account_data":{"types":[]}}"#;

/// Rooms with their newest event only: enough to see which rooms a user is in.
pub(crate) const LIGHT_FILTER: &str =
    r#"{"room":{"timeline":{"limit":1}},"presence":{"types":[]},"account_data":{"types":[]}}"#;

/// The filter of live followers and verification: up to 100 timeline events per room.
pub(crate) const TIMELINE_FILTER: &str = r#"{"room":{"timeline":{"limit":100}}}"#;

/// A `since` token for each user, taken now.
pub(crate) async fn since_tokens(ctx: &Ctx, users: &[UserRec]) -> Result<Vec<String>> {
    let users = Arc::new(users.to_vec());
    let api = ctx.api.clone();
    let jobs = Arc::clone(&users);
    let results = run_bounded(
        "since tokens",
        users.len(),
        ctx.setup_concurrency,
        Instant::now() + ctx.max_duration,
        move |i| {
            let api = api.clone();
            let jobs = Arc::clone(&jobs);
            async move { api.sync(jobs[i].token(), None, SINCE_FILTER, 0).await?.next_batch() }
        },
    )
    .await;
    results.into_iter().collect()
}

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

/// Totals of the followers' long polls.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FollowTotals {
    pub(crate) syncs: u64,
    pub(crate) errors: u64,
    pub(crate) limited: u64,
}

/// Long-polling members, each recording when it first saw each event ID.
#[derive(Debug)]
pub(crate) struct Followers {
    stop: watch::Sender<bool>,
    seen: Vec<Seen>,
    tasks: Vec<tokio::task::JoinHandle<FollowTotals>>,
}

/// Most polls one follower makes (a bound in count besides the deadline).
const MAX_POLLS: u64 = 1_000_000;

impl Followers {
    /// Starts one long-poll loop per `(user, since)`.
    pub(crate) fn start(
        api: &Api,
        members: Vec<(UserRec, String)>,
        timeout_ms: u64,
        deadline: Instant,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let mut seen = Vec::new();
        let mut tasks = Vec::new();
        for (user, since) in members {
            let record: Seen = Arc::default();
            seen.push(Arc::clone(&record));
            let api = api.clone();
            let mut stopped = stopped.clone();
            tasks.push(tokio::spawn(async move {
                let mut totals = FollowTotals::default();
                let mut since = since;
                while totals.syncs < MAX_POLLS && Instant::now() < deadline && !*stopped.borrow() {
                    let poll = api.sync(user.token(), Some(&since), TIMELINE_FILTER, timeout_ms);
                    let result = tokio::select! {
                        result = poll => result,
                        _ = stopped.changed() => break,
                    };
                    let now = Instant::now();
                    totals.syncs += 1;
                    let next = result.and_then(|sync| {
                        let mut record = record.lock().unwrap_or_else(PoisonError::into_inner);
                        for room in sync.joined() {
                            totals.limited += u64::from(room.limited);
                            for event in room.timeline {
                                if let Some(id) = event["event_id"].as_str() {
                                    record.entry(id.to_owned()).or_insert(now);
                                }
                            }
                        }
                        sync.next_batch()
                    });
                    match next {
                        Ok(next) => since = next,
                        Err(_) => {
                            totals.errors += 1;
                            if totals.errors > 50 {
                                break;
                            }
                            tokio::select! {
                                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                                _ = stopped.changed() => break,
                            }
                        }
                    }
                }
                totals
            }));
        }
        Self { stop, seen, tasks }
    }

    /// Whether follower `index` has seen all of `ids`.
    pub(crate) fn has_all(&self, index: usize, ids: &[&str]) -> bool {
        let Some(seen) = self.seen.get(index) else { return false };
        let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        ids.iter().all(|id| seen.contains_key(*id))
    }

    /// Waits until each follower has seen its expected IDs, or the deadline.
    pub(crate) async fn wait_for(&self, expected: &[Vec<&str>], deadline: Instant) -> bool {
        loop {
            if expected.iter().enumerate().all(|(index, ids)| self.has_all(index, ids)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the loops (dropping parked polls) and returns what each follower saw.
    pub(crate) async fn stop(self) -> (Vec<HashMap<String, Instant>>, FollowTotals) {
        let _ = self.stop.send(true);
        let mut totals = FollowTotals::default();
        for task in self.tasks {
            if let Ok(Ok(t)) = tokio::time::timeout(Duration::from_secs(10), task).await {
                totals.syncs += t.syncs;
                totals.errors += t.errors;
                totals.limited += t.limited;
            }
        }
        let seen = self
            .seen
            .into_iter()
            .map(|seen| std::mem::take(&mut *seen.lock().unwrap_or_else(PoisonError::into_inner)))
            .collect();
        (seen, totals)
    }
}

/// One member to verify: its `since` from before the measured phase and the event IDs it
/// must find, per room.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    pub(crate) user: UserRec,
    pub(crate) since: String,
    pub(crate) expected: HashMap<String, Vec<String>>,
}

#[derive(Debug, Default)]
struct CheckResult {
    expected: u64,
    in_sync: u64,
    via_messages: u64,
    missing: Vec<String>,
}

/// Most `/messages` pages read back per room when a timeline was `limited`.
const MAX_PAGES: usize = 200;

async fn check_one(api: &Api, check: &Check) -> Result<CheckResult> {
    let sync = api.sync(check.user.token(), Some(&check.since), TIMELINE_FILTER, 0).await?;
    let joined = sync.joined();
    let mut result = CheckResult::default();
    for (room_id, ids) in &check.expected {
        result.expected += ids.len() as u64;
        let room = joined.iter().find(|room| room.room_id == room_id);
        let found: HashSet<&str> = room
            .map(|room| {
                room.timeline.iter().filter_map(|event| event["event_id"].as_str()).collect()
            })
            .unwrap_or_default();
        let mut outstanding: HashSet<&str> =
            ids.iter().map(String::as_str).filter(|id| !found.contains(id)).collect();
        result.in_sync += ids.len() as u64 - outstanding.len() as u64;
        // A limited timeline leaves a gap the client fills with /messages.
        if let Some(mut from) =
            room.filter(|room| room.limited).and_then(|room| room.prev_batch).map(str::to_owned)
        {
            let mut pages = 0;
            while !outstanding.is_empty() && pages < MAX_PAGES {
                pages += 1;
                let page = api.messages_backwards(check.user.token(), room_id, &from, 100).await?;
                let chunk = page["chunk"].as_array().map_or(&[][..], Vec::as_slice);
                for event in chunk {
                    if let Some(id) = event["event_id"].as_str()
                        && outstanding.remove(id)
                    {
                        result.via_messages += 1;
                    }
                }
                match page["end"].as_str() {
                    Some(end) if !chunk.is_empty() && end != from => from = end.to_owned(),
                    _ => break,
                }
            }
        }
        result.missing.extend(
            outstanding
                .into_iter()
                .map(|id| format!("{} did not get {id} in {room_id}", check.user.id())),
        );
    }
    Ok(result)
}

/// Checks every member's /sync since its `since` for its expected events.
pub(crate) async fn verify(ctx: &Ctx, checks: Vec<Check>) -> Verification {
    let checks = Arc::new(checks);
    let api = ctx.api.clone();
    let jobs = Arc::clone(&checks);
    // Verification gets its own time budget: it must finish even after a long measurement.
    let deadline = Instant::now() + ctx.max_duration;
    let results =
        run_bounded("verifying /sync", checks.len(), ctx.setup_concurrency, deadline, move |i| {
            let api = api.clone();
            let jobs = Arc::clone(&jobs);
            async move { check_one(&api, &jobs[i]).await }
        })
        .await;
    let mut verification = Verification::default();
    for (check, result) in checks.iter().zip(results) {
        verification.members_checked += 1;
        match result {
            Ok(result) => {
                verification.expected += result.expected;
                verification.found_in_sync += result.in_sync;
                verification.found_via_messages += result.via_messages;
                verification.missing += result.missing.len() as u64;
                for example in result.missing {
                    verification.example(example);
                }
            }
            Err(error) => {
                verification.check_errors += 1;
                verification.expected +=
                    check.expected.values().map(|ids| ids.len() as u64).sum::<u64>();
                verification.example(format!("checking {}: {error}", check.user.id()));
            }
        }
    }
    verification
}
