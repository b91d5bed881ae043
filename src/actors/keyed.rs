//! Keyed actors: one actor per key (a room id, a server name, a user id), spawned on the first
//! message for its key, passivated after an idle period, restarted with backoff after a
//! failure, never taking its supervisor down.
//!
//! A [`Behaviour`] says what an actor of one kind does; a [`Registry`] owns the live actors of
//! that kind. Every message goes through [`Registry::send`] or [`Registry::call`], which count
//! the actor's queued messages: a full queue is refused with [`Error::limit_exceeded`]
//! instead of growing without bound (ractor mailboxes are unbounded).
//!
//! Passivation and sending cannot race: a sender increments the queue count while holding the
//! registry's read guard on the actor's slot, and a passivating actor removes its slot under
//! the write guard only when its count is zero. Once removed, the next message spawns a fresh
//! actor that rebuilds its state from the database.
//!
//! An actor's own timers ([`Context::send_after`]) run on the server's [`Time`], so tests can
//! move them forward; idle checks and restart backoff are the runtime's housekeeping and run
//! on the system clock.

use std::{
    fmt::Display,
    future::Future,
    hash::Hash,
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use dashmap::DashMap;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, MessagingErr};
use tokio::sync::{OnceCell, oneshot};

use crate::{
    Error, Result,
    memory::{Arena, InArena},
    time::Time,
};

/// A reply channel carried inside a message.
pub type Reply<T> = oneshot::Sender<T>;

/// What one kind of keyed actor does.
pub trait Behaviour: Send + Sync + Sized + 'static {
    type Key: Clone + Eq + Hash + Display + Send + Sync + 'static;
    type Message: Send + 'static;
    type State: Send + 'static;

    /// The kind's name, for actor names and metrics ("room", "destination", "presence").
    const KIND: &'static str;

    /// Builds the state of the actor for `key`, typically from the database.
    fn start(&self, key: &Self::Key) -> impl Future<Output = Result<Self::State>> + Send;

    /// Handles one message. An `Err` or a panic fails the actor: its queued messages are
    /// dropped (their callers see an error) and it is restarted with backoff.
    fn handle(
        &self,
        context: &Context<Self>,
        message: Self::Message,
        state: &mut Self::State,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Whether the actor may be passivated now that it is idle (false while it still has
    /// timers or work that only its memory holds).
    fn can_passivate(&self, _state: &Self::State) -> bool {
        true
    }

    /// Whether a failed actor comes back by itself after its backoff (for actors with
    /// background work, such as delivery queues) rather than on its next message.
    fn restart_eagerly(&self) -> bool {
        false
    }

    /// Called once an actor of this kind has failed and its state is gone: undo what it kept
    /// outside its state and would have cleaned up itself (entries in shared maps, marks that
    /// its timers were armed). Its timers died with it.
    fn failed(&self, _key: &Self::Key) {}

    /// A message that brings a failed actor back after its backoff, for actors whose work
    /// only their timers drive (`None`: it waits for its next message, or
    /// [`Behaviour::restart_eagerly`]).
    fn wake_after_failure(&self, _key: &Self::Key) -> Option<Self::Message> {
        None
    }
}

/// Limits shared by every actor of a registry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Idle time after which an actor passivates.
    pub idle_timeout: Duration,
    /// Queued messages beyond which senders are refused.
    pub mailbox_limit: usize,
}

/// What the actor itself receives.
pub enum Envelope<M> {
    /// A message from a sender, counted in the queue depth.
    Message(M),
    /// A message the actor scheduled to itself; not counted.
    Timer(M),
    /// Time to check whether the actor has been idle long enough to passivate.
    IdleCheck,
    /// Fail now, as a handler error would ([`Registry::inject_failure`]).
    Fail,
}

/// Handed to [`Behaviour::handle`]: who the actor is and how it schedules its own timers.
pub struct Context<B: Behaviour> {
    pub key: B::Key,
    myself: ActorRef<Envelope<B::Message>>,
    time: Time,
}

impl<B: Behaviour> Context<B> {
    /// Delivers `message` to this actor after `delay` on the server's clock (dropped if it has
    /// stopped by then).
    pub fn send_after(&self, delay: Duration, message: B::Message) {
        let myself = self.myself.clone();
        let sleep = self.time.sleep(delay);
        tokio::spawn(async move {
            sleep.await;
            let _ = myself.send_message(Envelope::Timer(message));
        });
    }
}

struct Slot<M> {
    actor: OnceCell<ActorRef<Envelope<M>>>,
    depth: AtomicUsize,
}

impl<M> Slot<M> {
    fn new() -> Self {
        Self { actor: OnceCell::new(), depth: AtomicUsize::new(0) }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Failures older than this are forgiven.
const FAILURE_MEMORY: Duration = Duration::from_secs(60);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

fn backoff(count: u32) -> Duration {
    BACKOFF_BASE.saturating_mul(1 << count.saturating_sub(1).min(16)).min(BACKOFF_MAX)
}

/// A live actor's key and slot, found from its actor id when the supervisor hears of its end.
type Registration<B> = (<B as Behaviour>::Key, Arc<Slot<<B as Behaviour>::Message>>);

struct Shared<B: Behaviour> {
    behaviour: Arc<B>,
    namespace: String,
    limits: Limits,
    time: Time,
    slots: DashMap<B::Key, Arc<Slot<B::Message>>>,
    keys_by_actor: DashMap<ActorId, Registration<B>>,
    failures: DashMap<B::Key, Failures>,
    supervisor: OnceCell<ActorRef<SupervisorMessage<B::Key>>>,
    spawn_sequence: AtomicU64,
}

/// The live actors of one kind, and the way to reach them.
pub struct Registry<B: Behaviour> {
    shared: Arc<Shared<B>>,
}

impl<B: Behaviour> Clone for Registry<B> {
    fn clone(&self) -> Self {
        Self { shared: Arc::clone(&self.shared) }
    }
}

impl<B: Behaviour> Registry<B> {
    /// Creates the registry and its supervisor, linked under `root`; its actors' timers run
    /// on `time`.
    pub async fn start(
        behaviour: B,
        namespace: &str,
        limits: Limits,
        time: Time,
        root: ActorCell,
    ) -> Result<Self> {
        let shared = Arc::new(Shared {
            behaviour: Arc::new(behaviour),
            namespace: namespace.to_owned(),
            limits,
            time,
            slots: DashMap::new(),
            keys_by_actor: DashMap::new(),
            failures: DashMap::new(),
            supervisor: OnceCell::new(),
            spawn_sequence: AtomicU64::new(0),
        });
        let supervisor = KindSupervisor::<B> { shared: Arc::downgrade(&shared) };
        let name = format!("{namespace}/{}", B::KIND);
        let (supervisor, _) =
            Actor::spawn_linked(Some(name), supervisor, (), root).await.map_err(|error| {
                Error::internal(format!("cannot start the {} supervisor: {error}", B::KIND))
            })?;
        let _ = shared.supervisor.set(supervisor);
        Ok(Self { shared })
    }

    /// Number of live actors.
    pub fn live(&self) -> usize {
        self.shared.slots.len()
    }

    /// Whether the actor for `key` is live.
    pub fn is_live(&self, key: &B::Key) -> bool {
        self.shared.slots.get(key).is_some_and(|slot| slot.actor.initialized())
    }

    /// Messages queued for `key`'s actor.
    pub fn queued(&self, key: &B::Key) -> usize {
        self.shared.slots.get(key).map_or(0, |slot| slot.depth.load(Ordering::Acquire))
    }

    /// Sends `message` to the actor for `key`, spawning it if needed.
    pub async fn send(&self, key: &B::Key, message: B::Message) -> Result<()> {
        let mut message = message;
        // A send can only miss when the actor stopped between lookup and send; the next
        // attempt spawns a new one. Three attempts is plenty for that race.
        for _ in 0..3 {
            let (slot, actor) = self.live_actor(key).await?;
            match self.enqueue(key, &slot, &actor, message)? {
                None => return Ok(()),
                Some(returned) => message = returned,
            }
        }
        Err(Error::internal(format!("{} actor {key} kept stopping", B::KIND)))
    }

    /// Sends a message built around a reply channel and waits up to `timeout` for the answer.
    pub async fn call<R: Send + 'static>(
        &self,
        key: &B::Key,
        build: impl FnOnce(Reply<R>) -> B::Message,
        timeout: Duration,
    ) -> Result<R> {
        let (reply, answer) = oneshot::channel();
        self.send(key, build(reply)).await?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => {
                Err(Error::internal(format!("{} actor {key} failed before replying", B::KIND)))
            }
            Err(_) => {
                Err(Error::internal(format!("{} actor {key} did not reply in time", B::KIND)))
            }
        }
    }

    /// Returns the slot and actor for `key`, spawning the actor if it is not live.
    async fn live_actor(
        &self,
        key: &B::Key,
    ) -> Result<(Arc<Slot<B::Message>>, ActorRef<Envelope<B::Message>>)> {
        let slot = Arc::clone(
            self.shared.slots.entry(key.clone()).or_insert_with(|| Arc::new(Slot::new())).value(),
        );
        let spawned = slot.actor.get_or_try_init(|| self.spawn(key, Arc::clone(&slot))).await;
        match spawned {
            Ok(actor) => Ok((Arc::clone(&slot), actor.clone())),
            Err(error) => {
                self.shared.slots.remove_if(key, |_, current| Arc::ptr_eq(current, &slot));
                Err(error)
            }
        }
    }

    /// Queues `message` unless the queue is full; gives it back if the actor has stopped.
    fn enqueue(
        &self,
        key: &B::Key,
        slot: &Arc<Slot<B::Message>>,
        actor: &ActorRef<Envelope<B::Message>>,
        message: B::Message,
    ) -> Result<Option<B::Message>> {
        let Some(current) = self.shared.slots.get(key) else {
            return Ok(Some(message));
        };
        if !Arc::ptr_eq(current.value(), slot) {
            return Ok(Some(message));
        }
        let depth = slot.depth.load(Ordering::Acquire);
        if depth >= self.shared.limits.mailbox_limit {
            metrics::counter!("tuwunel_actor_refused_total", "kind" => B::KIND).increment(1);
            return Err(Error::limit_exceeded(Duration::from_millis(100 + depth as u64)));
        }
        // Incremented under the read guard: passivation (which needs the write guard) cannot
        // interleave between this and the send.
        slot.depth.fetch_add(1, Ordering::AcqRel);
        metrics::histogram!("tuwunel_actor_mailbox_depth", "kind" => B::KIND)
            .record((depth + 1) as f64);
        metrics::gauge!("tuwunel_actor_queued_messages", "kind" => B::KIND).increment(1.0);
        match actor.send_message(Envelope::Message(message)) {
            Ok(()) => Ok(None),
            Err(MessagingErr::SendErr(Envelope::Message(message))) => {
                slot.depth.fetch_sub(1, Ordering::AcqRel);
                metrics::gauge!("tuwunel_actor_queued_messages", "kind" => B::KIND).decrement(1.0);
                drop(current);
                self.shared.slots.remove_if(key, |_, existing| Arc::ptr_eq(existing, slot));
                Ok(Some(message))
            }
            Err(_) => {
                slot.depth.fetch_sub(1, Ordering::AcqRel);
                metrics::gauge!("tuwunel_actor_queued_messages", "kind" => B::KIND).decrement(1.0);
                Err(Error::internal(format!("{} actor {key} is unreachable", B::KIND)))
            }
        }
    }

    async fn spawn(
        &self,
        key: &B::Key,
        slot: Arc<Slot<B::Message>>,
    ) -> Result<ActorRef<Envelope<B::Message>>> {
        if let Some(failures) = self.shared.failures.get(key).map(|entry| *entry.value()) {
            let wait = backoff(failures.count);
            let since = failures.last.elapsed();
            if since < wait {
                return Err(Error::limit_exceeded(wait - since));
            }
        }
        let supervisor = self
            .shared
            .supervisor
            .get()
            .ok_or_else(|| Error::internal("actor supervisor is not running"))?
            .get_cell();
        let sequence = self.shared.spawn_sequence.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}/{}/{key}#{sequence}", self.shared.namespace, B::KIND);
        let actor = KeyedActor::<B> { shared: Arc::downgrade(&self.shared) };
        let started = Instant::now();
        // The actor's mailboxes and task are allocated here; they go when it passivates.
        let spawning =
            Actor::spawn_linked(Some(name), actor, (key.clone(), Arc::clone(&slot)), supervisor);
        let (actor, _) = InArena::new(Arena::Actors, spawning).await.map_err(|error| {
            self.record_failure(key);
            Error::internal(format!("{} actor {key} failed to start: {error}", B::KIND))
        })?;
        self.shared.keys_by_actor.insert(actor.get_id(), (key.clone(), slot));
        metrics::counter!("tuwunel_actor_spawns_total", "kind" => B::KIND).increment(1);
        metrics::histogram!("tuwunel_actor_start_seconds", "kind" => B::KIND)
            .record(started.elapsed().as_secs_f64());
        metrics::gauge!("tuwunel_actors_live", "kind" => B::KIND).increment(1.0);
        Ok(actor)
    }

    fn record_failure(&self, key: &B::Key) {
        let now = Instant::now();
        self.shared.failures.retain(|_, failures| failures.last.elapsed() < FAILURE_MEMORY);
        let mut entry =
            self.shared.failures.entry(key.clone()).or_insert(Failures { count: 0, last: now });
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
    }

    /// Makes the live actor for `key` fail as its next step, as an error from its handler
    /// would: for tests of what a failure leaves behind. False if it is not live.
    pub fn inject_failure(&self, key: &B::Key) -> bool {
        let actor = self.shared.slots.get(key).and_then(|slot| slot.actor.get().cloned());
        actor.is_some_and(|actor| actor.send_message(Envelope::Fail).is_ok())
    }

    /// Drains every actor (queued messages are handled first) and stops the supervisor.
    pub async fn shutdown(&self, timeout: Duration) {
        if let Some(supervisor) = self.shared.supervisor.get() {
            supervisor.get_cell().drain_children_and_wait(Some(timeout)).await;
            let _ = supervisor.stop_and_wait(Some("shutdown".to_owned()), Some(timeout)).await;
        }
        self.shared.slots.clear();
    }
}

/// Per-actor state wrapped around the behaviour's state.
pub struct KeyedState<B: Behaviour> {
    context: Context<B>,
    slot: Arc<Slot<B::Message>>,
    inner: B::State,
    last_activity: Instant,
    idle_check_pending: bool,
}

struct KeyedActor<B: Behaviour> {
    shared: Weak<Shared<B>>,
}

impl<B: Behaviour> KeyedActor<B> {
    fn shared(&self) -> Result<Arc<Shared<B>>, ActorProcessingErr> {
        self.shared.upgrade().ok_or_else(|| "registry dropped".into())
    }

    fn arm_idle_check(
        &self,
        myself: &ActorRef<Envelope<B::Message>>,
        state: &mut KeyedState<B>,
        after: Duration,
    ) {
        if !state.idle_check_pending {
            state.idle_check_pending = true;
            let myself = myself.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = myself.send_message(Envelope::IdleCheck);
            });
        }
    }
}

impl<B: Behaviour> Actor for KeyedActor<B> {
    type Msg = Envelope<B::Message>;
    type State = KeyedState<B>;
    type Arguments = (B::Key, Arc<Slot<B::Message>>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (key, slot): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let shared = self.shared()?;
        let inner = InArena::new(Arena::Actors, shared.behaviour.start(&key))
            .await
            .map_err(|error| Box::new(error) as ActorProcessingErr)?;
        let mut state = KeyedState {
            context: Context { key, myself: myself.clone(), time: shared.time.clone() },
            slot,
            inner,
            last_activity: Instant::now(),
            idle_check_pending: false,
        };
        self.arm_idle_check(&myself, &mut state, shared.limits.idle_timeout);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        envelope: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let shared = self.shared()?;
        match envelope {
            Envelope::Message(message) => {
                state.slot.depth.fetch_sub(1, Ordering::AcqRel);
                metrics::gauge!("tuwunel_actor_queued_messages", "kind" => B::KIND).decrement(1.0);
                state.last_activity = Instant::now();
                let handling = shared.behaviour.handle(&state.context, message, &mut state.inner);
                InArena::new(Arena::Actors, handling).await?;
            }
            Envelope::Timer(message) => {
                state.last_activity = Instant::now();
                let handling = shared.behaviour.handle(&state.context, message, &mut state.inner);
                InArena::new(Arena::Actors, handling).await?;
            }
            Envelope::Fail => return Err("failure injected".into()),
            Envelope::IdleCheck => {
                state.idle_check_pending = false;
                let idle = state.last_activity.elapsed();
                let timeout = shared.limits.idle_timeout;
                if idle < timeout || !shared.behaviour.can_passivate(&state.inner) {
                    let wait = timeout
                        .saturating_sub(idle)
                        .max(timeout / 4)
                        .max(Duration::from_millis(10));
                    self.arm_idle_check(&myself, state, wait);
                    return Ok(());
                }
                let slot = &state.slot;
                let removed = shared.slots.remove_if(&state.context.key, |_, current| {
                    Arc::ptr_eq(current, slot) && current.depth.load(Ordering::Acquire) == 0
                });
                if removed.is_some() {
                    metrics::counter!("tuwunel_actor_passivations_total", "kind" => B::KIND)
                        .increment(1);
                    crate::memory::note_memory_freed();
                    myself.stop(Some("passivated".to_owned()));
                } else {
                    self.arm_idle_check(&myself, state, timeout);
                }
            }
        }
        Ok(())
    }
}

/// Messages to a kind's supervisor.
pub enum SupervisorMessage<K> {
    /// Bring the actor for this key back after a failure; the number is the attempt.
    Restart(K, u32),
}

/// Attempts to bring back an actor with [`Behaviour::wake_after_failure`] before giving up
/// (each after the key's backoff, so about five minutes in all).
const WAKE_ATTEMPTS: u32 = 12;

/// Supervises the actors of one kind; survives their failures and restarts them.
struct KindSupervisor<B: Behaviour> {
    shared: Weak<Shared<B>>,
}

impl<B: Behaviour> Actor for KindSupervisor<B> {
    type Msg = SupervisorMessage<B::Key>;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let Some(shared) = self.shared.upgrade() else {
            return Ok(());
        };
        match message {
            SupervisorMessage::Restart(key, attempt) => {
                let registry = Registry { shared: Arc::clone(&shared) };
                let restarted = match shared.behaviour.wake_after_failure(&key) {
                    Some(wake) => {
                        metrics::counter!("tuwunel_actor_restarts_total", "kind" => B::KIND)
                            .increment(1);
                        registry.send(&key, wake).await
                    }
                    None if !registry.is_live(&key) => {
                        metrics::counter!("tuwunel_actor_restarts_total", "kind" => B::KIND)
                            .increment(1);
                        registry.live_actor(&key).await.map(drop)
                    }
                    None => Ok(()),
                };
                if let Err(error) = restarted {
                    tracing::warn!(kind = B::KIND, %key, %error, attempt, "restart failed");
                    if attempt < WAKE_ATTEMPTS
                        && shared.behaviour.wake_after_failure(&key).is_some()
                    {
                        schedule_restart(&shared, &myself, key, attempt + 1);
                    }
                }
            }
        }
        Ok(())
    }

    // Overrides ractor's default, which stops the supervisor when any child exits.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: ractor::SupervisionEvent,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let Some(shared) = self.shared.upgrade() else {
            return Ok(());
        };
        let (cell, failure) = match event {
            ractor::SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            ractor::SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error)),
            _ => return Ok(()),
        };
        let Some((_, (key, slot))) = shared.keys_by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        metrics::gauge!("tuwunel_actors_live", "kind" => B::KIND).decrement(1.0);
        shared.slots.remove_if(&key, |_, current| Arc::ptr_eq(current, &slot));
        let queued = slot.depth.swap(0, Ordering::AcqRel);
        if queued > 0 {
            metrics::gauge!("tuwunel_actor_queued_messages", "kind" => B::KIND)
                .decrement(queued as f64);
        }
        if let Some(error) = failure {
            tracing::error!(kind = B::KIND, %key, %error, dropped = queued, "actor failed");
            metrics::counter!("tuwunel_actor_failures_total", "kind" => B::KIND).increment(1);
            let registry = Registry { shared: Arc::clone(&shared) };
            registry.record_failure(&key);
            shared.behaviour.failed(&key);
            if shared.behaviour.restart_eagerly()
                || shared.behaviour.wake_after_failure(&key).is_some()
            {
                schedule_restart(&shared, &myself, key, 1);
            }
        }
        Ok(())
    }
}

/// Sends the supervisor a restart of `key` once the key's backoff has passed.
fn schedule_restart<B: Behaviour>(
    shared: &Shared<B>,
    supervisor: &ActorRef<SupervisorMessage<B::Key>>,
    key: B::Key,
    attempt: u32,
) {
    let count = shared.failures.get(&key).map_or(1, |entry| entry.count);
    let wait = backoff(count);
    let supervisor = supervisor.clone();
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        let _ = supervisor.send_message(SupervisorMessage::Restart(key, attempt));
    });
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(40), Duration::from_secs(30));
    }
}
