//! Keyed actors: spawned on demand, passivated when idle, rebuilt from the database,
//! restarted after a panic without taking the supervisor down, and bounded mailboxes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tuwunel::{
    Result,
    actors::{ActorSystem, Behaviour, Context, Limits, Registry, Reply},
    storage::{Batch, EngineOptions, Storage, Table, catalogue::META},
    time::{ManualClock, Time},
};

use crate::common::wait_until;

const COUNTS: Table<String, u64> = Table::new(META);

/// A counter per key, persisted on every change: the smallest actor that owns durable state.
struct Counter {
    storage: Arc<Storage>,
    eager: bool,
    fail_next_start: Arc<AtomicBool>,
}

enum CounterMessage {
    Add(u64, Reply<u64>),
    Get(Reply<u64>),
    Sleep(Duration, Reply<()>),
    /// Adds `amount` after `delay`, through the actor's own timer.
    AddLater(Duration, u64),
    Panic,
}

fn record(key: &str) -> String {
    format!("counter/{key}")
}

impl Behaviour for Counter {
    type Key = String;
    type Message = CounterMessage;
    type State = u64;

    const KIND: &'static str = "counter";

    async fn start(&self, key: &String) -> Result<u64> {
        if self.fail_next_start.swap(false, Ordering::SeqCst) {
            return Err(tuwunel::Error::internal("refusing to start once"));
        }
        Ok(COUNTS.get(self.storage.engine(), &record(key))?.unwrap_or(0))
    }

    async fn handle(
        &self,
        context: &Context<Self>,
        message: CounterMessage,
        count: &mut u64,
    ) -> Result<()> {
        match message {
            CounterMessage::Add(amount, reply) => {
                let mut batch = Batch::new();
                COUNTS.put(&mut batch, &record(&context.key), &(*count + amount));
                self.storage.writer().commit(batch).await?;
                *count += amount;
                let _ = reply.send(*count);
            }
            CounterMessage::Get(reply) => {
                let _ = reply.send(*count);
            }
            CounterMessage::Sleep(duration, reply) => {
                tokio::time::sleep(duration).await;
                let _ = reply.send(());
            }
            CounterMessage::AddLater(delay, amount) => {
                let (reply, _) = tokio::sync::oneshot::channel();
                context.send_after(delay, CounterMessage::Add(amount, reply));
            }
            CounterMessage::Panic => panic!("counter asked to panic"),
        }
        Ok(())
    }

    fn restart_eagerly(&self) -> bool {
        self.eager
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    storage: Arc<Storage>,
    system: ActorSystem,
    registry: Registry<Counter>,
    fail_next_start: Arc<AtomicBool>,
}

async fn fixture(name: &str, limits: Limits, eager: bool) -> Fixture {
    fixture_on(name, limits, eager, Time::system()).await
}

async fn fixture_on(name: &str, limits: Limits, eager: bool, time: Time) -> Fixture {
    crate::common::init_logging();
    let _ = tuwunel::http::metrics::install();
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = Arc::new(Storage::open(&EngineOptions::for_path(dir.path())).expect("open").0);
    let system = ActorSystem::start(format!("actors-test-{name}"), time).await.expect("system");
    let fail_next_start = Arc::new(AtomicBool::new(false));
    let counter = Counter {
        storage: Arc::clone(&storage),
        eager,
        fail_next_start: Arc::clone(&fail_next_start),
    };
    let registry = system.registry(counter, limits).await.expect("registry");
    Fixture { _dir: dir, storage, system, registry, fail_next_start }
}

impl Fixture {
    async fn add(&self, key: &str, amount: u64) -> Result<u64> {
        self.registry
            .call(
                &key.to_owned(),
                |reply| CounterMessage::Add(amount, reply),
                Duration::from_secs(10),
            )
            .await
    }

    async fn get(&self, key: &str) -> Result<u64> {
        self.registry.call(&key.to_owned(), CounterMessage::Get, Duration::from_secs(10)).await
    }

    async fn finish(self) {
        self.registry.shutdown(Duration::from_secs(5)).await;
        self.system.shutdown(Duration::from_secs(5)).await;
        self.storage.close().await;
    }
}

const QUICK_IDLE: Limits = Limits { idle_timeout: Duration::from_millis(100), mailbox_limit: 64 };

#[tokio::test]
async fn actors_spawn_on_demand_passivate_and_come_back_with_their_state() {
    let fixture = fixture("lifecycle", QUICK_IDLE, false).await;
    assert_eq!(fixture.registry.live(), 0);
    assert_eq!(fixture.add("a", 5).await.expect("add"), 5);
    assert_eq!(fixture.add("b", 1).await.expect("add"), 1);
    assert_eq!(fixture.registry.live(), 2);

    // Idle actors passivate.
    assert!(
        wait_until(Duration::from_secs(5), || async { fixture.registry.live() == 0 }).await,
        "actors did not passivate"
    );

    // The next message spawns a new actor that rebuilds its state from the database.
    assert_eq!(fixture.get("a").await.expect("get"), 5);
    assert_eq!(fixture.add("a", 2).await.expect("add"), 7);
    assert!(fixture.registry.is_live(&"a".to_owned()));
    fixture.finish().await;
}

#[tokio::test]
async fn an_actors_timers_run_on_the_servers_clock() {
    let limits = Limits { idle_timeout: Duration::from_secs(60), mailbox_limit: 64 };
    let clock = ManualClock::new();
    let fixture = fixture_on("timers", limits, false, clock.time()).await;
    let key = "timed".to_owned();
    fixture
        .registry
        .send(&key, CounterMessage::AddLater(Duration::from_secs(3600), 5))
        .await
        .expect("send");
    assert_eq!(fixture.get("timed").await.expect("get"), 0);

    clock.advance(Duration::from_secs(3599));
    // Real time passing does not fire it either.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fixture.get("timed").await.expect("get"), 0, "the timer fired early");

    clock.advance(Duration::from_secs(1));
    assert!(
        wait_until(Duration::from_secs(5), || async { fixture.get("timed").await.ok() == Some(5) })
            .await,
        "the timer did not fire when the clock reached it"
    );
    fixture.finish().await;
}

#[tokio::test]
async fn a_busy_actor_is_not_passivated() {
    let fixture = fixture("busy", QUICK_IDLE, false).await;
    fixture.add("busy", 1).await.expect("add");
    // Keep it working for longer than the idle timeout.
    for _ in 0..30 {
        fixture.add("busy", 1).await.expect("add");
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(fixture.registry.is_live(&"busy".to_owned()), "passivated while in use");
    }
    fixture.finish().await;
}

#[tokio::test]
async fn a_panicking_actor_is_restarted_and_others_are_unaffected() {
    let limits = Limits { idle_timeout: Duration::from_secs(60), mailbox_limit: 64 };
    let fixture = fixture("panic", limits, true).await;
    fixture.add("victim", 3).await.expect("add");
    fixture.add("bystander", 4).await.expect("add");

    fixture.registry.send(&"victim".to_owned(), CounterMessage::Panic).await.expect("send");
    // The supervisor restarts it eagerly (after its backoff), with its state rebuilt.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            !fixture.registry.is_live(&"victim".to_owned())
        })
        .await,
        "the failed actor was not removed"
    );
    assert!(
        wait_until(Duration::from_secs(5), || async {
            fixture.registry.is_live(&"victim".to_owned())
        })
        .await,
        "the failed actor was not restarted"
    );
    assert_eq!(fixture.get("victim").await.expect("get after restart"), 3);
    // The supervisor and the other actor never noticed.
    assert_eq!(fixture.get("bystander").await.expect("get"), 4);
    assert_eq!(fixture.add("bystander", 1).await.expect("add"), 5);

    if let Some(handle) = tuwunel::http::metrics::install() {
        let text = handle.render();
        for name in [
            "tuwunel_actor_failures_total",
            "tuwunel_actor_restarts_total",
            "tuwunel_actors_live",
            "tuwunel_actor_spawns_total",
        ] {
            assert!(
                text.contains(&format!("{name}{{kind=\"counter\"}}")),
                "{name} missing:\n{text}"
            );
        }
    }
    fixture.finish().await;
}

#[tokio::test]
async fn a_lazily_restarted_actor_returns_on_its_next_message_after_backoff() {
    let limits = Limits { idle_timeout: Duration::from_secs(60), mailbox_limit: 64 };
    let fixture = fixture("lazy", limits, false).await;
    fixture.add("lazy", 2).await.expect("add");
    fixture.registry.send(&"lazy".to_owned(), CounterMessage::Panic).await.expect("send");
    assert!(
        wait_until(Duration::from_secs(5), || async {
            !fixture.registry.is_live(&"lazy".to_owned())
        })
        .await
    );
    // Within the backoff the caller is told to come back later; after it, the actor returns.
    let mut value = None;
    for _ in 0..100 {
        match fixture.get("lazy").await {
            Ok(count) => {
                value = Some(count);
                break;
            }
            Err(error) => {
                assert_eq!(error.errcode(), "M_LIMIT_EXCEEDED", "{error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert_eq!(value, Some(2));
    fixture.finish().await;
}

#[tokio::test]
async fn a_failed_start_is_reported_and_retried() {
    let fixture = fixture("start", QUICK_IDLE, false).await;
    fixture.fail_next_start.store(true, Ordering::SeqCst);
    let error = fixture.get("fragile").await.expect_err("start fails");
    assert_eq!(error.errcode(), "M_UNKNOWN", "{error}");
    assert!(!fixture.registry.is_live(&"fragile".to_owned()));
    let mut value = None;
    for _ in 0..100 {
        if let Ok(count) = fixture.get("fragile").await {
            value = Some(count);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(value, Some(0));
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_refuses_with_limit_exceeded() {
    let limits = Limits { idle_timeout: Duration::from_secs(60), mailbox_limit: 3 };
    let fixture = Arc::new(fixture("admission", limits, false).await);
    let key = "slow".to_owned();
    // One message being handled (sleeping) and three queued fill the mailbox.
    let mut waiting = Vec::new();
    for _ in 0..4 {
        let fixture = Arc::clone(&fixture);
        let key = key.clone();
        waiting.push(tokio::spawn(async move {
            fixture
                .registry
                .call(
                    &key,
                    |reply| CounterMessage::Sleep(Duration::from_millis(300), reply),
                    Duration::from_secs(10),
                )
                .await
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        wait_until(Duration::from_secs(2), || async { fixture.registry.queued(&key) == 3 }).await,
        "queue did not fill: {}",
        fixture.registry.queued(&key)
    );
    let refused = fixture.get("slow").await.expect_err("must be refused");
    assert_eq!(refused.errcode(), "M_LIMIT_EXCEEDED");
    assert_eq!(refused.status(), 429);
    for task in waiting {
        task.await.expect("task").expect("queued calls complete");
    }
    // Once drained it accepts again.
    assert_eq!(fixture.get("slow").await.expect("accepted"), 0);
    if let Ok(fixture) = Arc::try_unwrap(fixture) {
        fixture.finish().await;
    }
}

#[tokio::test]
async fn shutdown_drains_queued_messages() {
    let limits = Limits { idle_timeout: Duration::from_secs(60), mailbox_limit: 64 };
    let fixture = fixture("drain", limits, false).await;
    let mut replies = Vec::new();
    for _ in 0..10 {
        let (reply, answer) = tokio::sync::oneshot::channel();
        fixture.registry.send(&"d".to_owned(), CounterMessage::Add(1, reply)).await.expect("send");
        replies.push(answer);
    }
    let storage = Arc::clone(&fixture.storage);
    fixture.finish().await;
    let mut last = 0;
    for answer in replies {
        last = answer.await.expect("every queued message was handled before stopping");
    }
    assert_eq!(last, 10);
    drop(storage);
}
