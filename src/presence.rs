//! The presence actor: one per user whose presence is not offline. It owns the user's
//! presence state, moves it to `unavailable` after `presence_idle_timeout_s` and to
//! `offline` after `presence_offline_timeout_s` without activity (actor timers), persists
//! each change on the presence stream and wakes the syncs of everyone sharing a room. Once
//! offline it passivates: idle users cost nothing.

use std::{sync::Arc, time::Duration};

use dashmap::{DashMap, DashSet};
use ruma::{OwnedUserId, UserId};

use crate::{
    Config, Result,
    actors::{ActorSystem, Behaviour, Context, Limits, Registry, Reply},
    federation::outbox::{self, Outbox},
    storage::{
        Batch, Storage,
        codec::{Json, Prefix},
        ephemeral::{PRESENCE_STREAM_TABLE, PRESENCE_TABLE, PresenceRecord},
    },
    sync::hub::SyncHub,
    time::Time,
};

pub enum PresenceMessage {
    /// The client set a state (and optionally a status message).
    Set { state: String, status_msg: Option<Option<String>>, reply: Reply<Result<()>> },
    /// The user did something (a sync with `set_presence=online`); the reply comes once any
    /// change of state is committed, so the caller's own view includes it.
    Active { reply: Reply<Result<()>> },
    /// Time to check for idleness.
    Check,
}

pub struct PresenceState {
    record: PresenceRecord,
    /// The state the client asked for; activity only brings back what was asked.
    chosen: String,
    /// An idleness check is scheduled (an actor restarted from storage has none yet).
    timer_armed: bool,
}

pub struct PresenceActor {
    storage: Arc<Storage>,
    hub: Arc<SyncHub>,
    outbox: Outbox,
    activity: Arc<DashMap<OwnedUserId, u64>>,
    /// Users online with an idleness check scheduled: activity only needs recording in
    /// `activity`, which that check reads, so it costs no message to the actor.
    settled: Arc<DashSet<OwnedUserId>>,
    idle: Duration,
    offline: Duration,
    time: Time,
}

impl PresenceActor {
    async fn save(&self, user: &UserId, state: &mut PresenceState) -> Result<()> {
        let mut batch = Batch::new();
        let previous = state.record.position;
        if previous != 0 {
            PRESENCE_STREAM_TABLE.delete(&mut batch, &previous);
        }
        let record = state.record.clone();
        let user_id = user.to_owned();
        // Other servers sharing a room with the user hear of it too.
        let federated = self.outbox.presence().then(|| {
            let last_active_ago = self.time.now_ms().saturating_sub(record.last_active_ms);
            outbox::presence(user, &record.state, record.status_msg.as_deref(), last_active_ago)
        });
        let outbox = self.outbox.clone();
        let positions = self
            .storage
            .writer()
            .commit_with_positions(1, batch, move |batch, positions| {
                let mut record = record;
                record.position = positions.start;
                PRESENCE_STREAM_TABLE.put(batch, &positions.start, &user_id);
                PRESENCE_TABLE.put(batch, &user_id, &Json(record));
                if let Some(item) = federated {
                    outbox.put(batch, positions.start, &item);
                }
            })
            .await?;
        state.record.position = positions.start;
        for room in crate::rooms::joined_rooms(self.storage.engine(), user)? {
            self.hub.room_changed(&room);
        }
        self.hub.user_changed(user);
        Ok(())
    }

    fn schedule(&self, context: &Context<Self>, state: &mut PresenceState) {
        let wait = match state.record.state.as_str() {
            "online" => self.idle,
            "unavailable" => self.offline.saturating_sub(self.idle),
            _ => return,
        };
        state.timer_armed = true;
        context.send_after(wait.max(Duration::from_millis(100)), PresenceMessage::Check);
    }

    /// Keeps `settled` in step with the state after each message.
    fn settle(&self, user: &OwnedUserId, state: &PresenceState) {
        if state.record.state == "online" && state.timer_armed {
            if !self.settled.contains(user) {
                self.settled.insert(user.clone());
            }
        } else {
            self.settled.remove(user);
        }
    }
}

impl Behaviour for PresenceActor {
    type Key = OwnedUserId;
    type Message = PresenceMessage;
    type State = PresenceState;

    const KIND: &'static str = "presence";

    async fn start(&self, user: &OwnedUserId) -> Result<PresenceState> {
        let record = PRESENCE_TABLE.get(self.storage.engine(), user)?.map_or_else(
            || PresenceRecord {
                state: "offline".to_owned(),
                status_msg: None,
                last_active_ms: 0,
                position: 0,
            },
            |Json(record)| record,
        );
        // A restarted actor has no check scheduled until its first message.
        self.settled.remove(user);
        Ok(PresenceState { chosen: record.state.clone(), record, timer_armed: false })
    }

    async fn handle(
        &self,
        context: &Context<Self>,
        message: PresenceMessage,
        state: &mut PresenceState,
    ) -> Result<()> {
        let user = &context.key;
        let now = self.time.now_ms();
        match message {
            PresenceMessage::Set { state: wanted, status_msg, reply } => {
                let mut changed = wanted != state.record.state;
                if let Some(status_msg) = status_msg
                    && status_msg != state.record.status_msg
                {
                    state.record.status_msg = status_msg;
                    changed = true;
                }
                state.chosen = wanted.clone();
                state.record.state = wanted;
                if state.record.state != "offline" {
                    state.record.last_active_ms = now;
                    self.activity.insert(user.clone(), now);
                }
                let result = if changed { self.save(user, state).await } else { Ok(()) };
                self.schedule(context, state);
                let _ = reply.send(result);
            }
            PresenceMessage::Active { reply } => {
                self.activity.insert(user.clone(), now);
                state.record.last_active_ms = now;
                let mut result = Ok(());
                if state.record.state != "online" && state.chosen != "unavailable" {
                    state.record.state = "online".to_owned();
                    result = self.save(user, state).await;
                    self.schedule(context, state);
                } else if !state.timer_armed {
                    self.schedule(context, state);
                }
                let _ = reply.send(result);
            }
            PresenceMessage::Check => {
                state.timer_armed = false;
                // Unsettled before activity is read: an `active` that still finds the user
                // settled recorded its activity before this read.
                self.settled.remove(user);
                if let Some(recorded) = self.activity.get(user).map(|entry| *entry) {
                    state.record.last_active_ms = state.record.last_active_ms.max(recorded);
                }
                let idle_for =
                    Duration::from_millis(now.saturating_sub(state.record.last_active_ms));
                let next = if idle_for >= self.offline {
                    "offline".to_owned()
                } else if idle_for >= self.idle {
                    "unavailable".to_owned()
                } else {
                    state.record.state.clone()
                };
                if next != state.record.state {
                    let offline = next == "offline";
                    state.record.state = next;
                    if offline {
                        self.activity.remove(user);
                    }
                    self.save(user, state).await?;
                }
                self.schedule(context, state);
            }
        }
        self.settle(user, state);
        Ok(())
    }

    fn can_passivate(&self, state: &PresenceState) -> bool {
        state.record.state == "offline"
    }

    fn failed(&self, user: &OwnedUserId) {
        // Its idleness timer died with it: while the user stayed settled, activity would
        // never reach a new actor, and nothing would ever move them to unavailable.
        self.settled.remove(user);
    }

    fn wake_after_failure(&self, _user: &OwnedUserId) -> Option<PresenceMessage> {
        // A check from the stored state schedules the idleness timers again (and goes
        // offline at once when that is overdue).
        Some(PresenceMessage::Check)
    }
}

/// The presence service: the actors' registry and the users' latest activity.
pub struct Presence {
    pub actors: Registry<PresenceActor>,
    activity: Arc<DashMap<OwnedUserId, u64>>,
    settled: Arc<DashSet<OwnedUserId>>,
    enabled: bool,
    time: Time,
}

impl Presence {
    pub async fn start(
        config: &Config,
        storage: Arc<Storage>,
        hub: Arc<SyncHub>,
        system: &ActorSystem,
        time: Time,
    ) -> Result<Self> {
        let activity = Arc::new(DashMap::new());
        let settled = Arc::new(DashSet::new());
        let behaviour = PresenceActor {
            storage: Arc::clone(&storage),
            hub,
            outbox: Outbox::from_config(config),
            activity: Arc::clone(&activity),
            settled: Arc::clone(&settled),
            idle: Duration::from_secs(config.presence_idle_timeout_s.max(1)),
            offline: Duration::from_secs(
                config.presence_offline_timeout_s.max(config.presence_idle_timeout_s).max(1),
            ),
            time: time.clone(),
        };
        let limits = Limits {
            idle_timeout: Duration::from_secs(config.actor_idle_timeout_s.max(1)),
            mailbox_limit: config.actor_mailbox_limit.max(1),
        };
        let presence = Self {
            actors: system.registry(behaviour, limits).await?,
            activity,
            settled,
            enabled: config.allow_local_presence,
            time,
        };
        // Users left online or idle by the last run get their timers back (and go offline
        // at once if they were away longer than the offline timeout).
        let mut awake = Vec::new();
        PRESENCE_TABLE.scan(
            storage.engine(),
            &Prefix::all(),
            None,
            crate::storage::Direction::Forward,
            |user, Json(record)| {
                if record.state != "offline" {
                    awake.push(user);
                }
                std::ops::ControlFlow::Continue(())
            },
        )?;
        for user in awake {
            let _ = presence.actors.send(&user, PresenceMessage::Check).await;
        }
        Ok(presence)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Notes activity (a request that counts as the user being there).
    pub async fn active(&self, user: &UserId) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        // Recorded before looking, so a check that unsettles the user meanwhile either sees
        // this activity or leaves the user unsettled for the message below.
        if self.settled.contains(user) {
            self.activity.insert(user.to_owned(), self.time.now_ms());
            if self.settled.contains(user) {
                return Ok(());
            }
        }
        self.actors
            .call(
                &user.to_owned(),
                |reply| PresenceMessage::Active { reply },
                Duration::from_secs(30),
            )
            .await?
    }

    /// Sets a user's presence as they asked.
    pub async fn set(
        &self,
        user: &UserId,
        state: &str,
        status_msg: Option<Option<String>>,
    ) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let state = state.to_owned();
        self.actors
            .call(
                &user.to_owned(),
                |reply| PresenceMessage::Set { state, status_msg, reply },
                Duration::from_secs(30),
            )
            .await?
    }

    /// Milliseconds since `user` was last active, preferring what is in memory.
    pub fn last_active_ms(&self, user: &UserId, stored: u64) -> u64 {
        self.activity.get(user).map_or(stored, |entry| (*entry).max(stored))
    }
}
