//! Pushers and their delivery. One pusher actor per user owns that user's pushers: it sets
//! and removes them and delivers the user's notifications to each HTTP push gateway
//! (`/_matrix/push/v1/notify`), one request at a time, resuming from the position each
//! pusher last delivered (kept in storage, so a restart loses nothing), retrying with
//! backoff and dropping pushers whose pushkey the gateway rejects.

use std::{ops::ControlFlow, sync::Arc, time::Duration};

use dashmap::DashSet;

use ruma::{OwnedUserId, UserId};
use serde_json::{Value as JsonValue, json};

use super::{
    counts,
    gateway::{GatewayAnswer, GatewayClient},
};
use crate::{
    Config, Error, Result,
    actors::{ActorSystem, Behaviour, Context, Limits, Registry, Reply},
    limits,
    rooms::{
        self,
        commits::{CommitListener, Pending, RoomCommit, done},
    },
    storage::{
        Batch, Direction, Storage,
        codec::{Json, Prefix},
        push::{
            NOTIFICATIONS_TABLE, NotificationRecord, PUSHER_PROGRESS_TABLE, PUSHERS_TABLE,
            PUSHKEYS_TABLE, PusherRecord,
        },
    },
    time::Time,
};

/// Notifications pushed per round before the actor yields to its mailbox.
const ROUND: usize = 50;
/// Notifications older than this are not pushed any more (a phone that was off for a day
/// does not need yesterday's buzz).
const MAX_AGE_MS: u64 = 24 * 3600 * 1000;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(300);
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(10);

/// `(user, app id, pushkey)`.
type PusherKey = (OwnedUserId, String, String);

pub enum PusherMessage {
    /// Creates or replaces the pusher `(app_id, pushkey)`.
    Set { app_id: String, pushkey: String, record: PusherRecord, reply: Reply<Result<()>> },
    /// Removes a pusher (no error when it does not exist).
    Remove { app_id: String, pushkey: String, reply: Reply<Result<()>> },
    /// Removes every pusher (the account is being deactivated).
    RemoveAll { reply: Reply<Result<()>> },
    /// New notifications may be waiting.
    Wake,
    /// The backoff after a failed delivery is over.
    Retry,
}

pub struct PusherState {
    /// The delay before the last scheduled retry; `None` after a clean round.
    backoff: Option<Duration>,
    retry_pending: bool,
}

pub struct PusherActor {
    storage: Arc<Storage>,
    client: GatewayClient,
    with_pushers: Arc<DashSet<OwnedUserId>>,
    /// What the age of a notification is measured by.
    time: Time,
}

/// What delivering one notification came to.
enum Delivery {
    Delivered,
    Rejected,
    /// The gateway's address is in `ip_range_denylist`: the notification is dropped.
    Denied(String),
    Failed(String),
}

impl PusherActor {
    fn pushers(&self, user: &UserId) -> Result<Vec<(PusherKey, PusherRecord)>> {
        Ok(PUSHERS_TABLE
            .collect(self.storage.engine(), &Prefix::of(user), Direction::Forward, usize::MAX)?
            .into_iter()
            .map(|(key, Json(record))| (key, record))
            .collect())
    }

    async fn remove(&self, key: &PusherKey) -> Result<()> {
        let mut batch = Batch::new();
        PUSHERS_TABLE.delete(&mut batch, key);
        PUSHER_PROGRESS_TABLE.delete(&mut batch, key);
        PUSHKEYS_TABLE.delete(&mut batch, &(key.1.clone(), key.2.clone(), key.0.clone()));
        self.storage.writer().commit(batch).await
    }

    async fn set(
        &self,
        user: &UserId,
        app_id: String,
        pushkey: String,
        record: PusherRecord,
    ) -> Result<()> {
        let key = (user.to_owned(), app_id.clone(), pushkey.clone());
        let engine = self.storage.engine();
        if !PUSHERS_TABLE.contains(engine, &key)?
            && PUSHERS_TABLE.count(engine, &Prefix::of(user), limits::MAX_PUSHERS)?
                >= limits::MAX_PUSHERS
        {
            return Err(Error::user_limit(format!(
                "You can have at most {} pushers; remove those of devices you no longer use.",
                limits::MAX_PUSHERS
            )));
        }
        // Known before the commit, so no notification can slip between the two unwoken.
        self.with_pushers.insert(user.to_owned());
        let mut batch = Batch::new();
        PUSHERS_TABLE.put(&mut batch, &key, &Json(record));
        PUSHKEYS_TABLE.put(&mut batch, &(app_id, pushkey, user.to_owned()), &());
        self.storage.writer().commit(batch).await
    }

    /// The gateway request for one notification.
    fn payload(
        &self,
        user: &UserId,
        record: &PusherRecord,
        pushkey: &str,
        app_id: &str,
        notification: &NotificationRecord,
    ) -> Result<Option<JsonValue>> {
        let engine = self.storage.engine();
        let Some(pdu) = rooms::readable_pdu(engine, notification.event)? else { return Ok(None) };
        let format = record.pusher["data"]["format"].as_str().unwrap_or_default();
        let mut data = record.pusher["data"].clone();
        if let Some(data) = data.as_object_mut() {
            data.remove("url");
        }
        let tweaks = tweaks(&notification.actions);
        let unread = counts::total_unread(engine, user)?;
        let mut payload = json!({
            "event_id": pdu.event_id,
            "room_id": pdu.room_id,
            "counts": { "unread": unread },
            "prio": if notification.highlight || pdu.kind.to_string() == "m.room.encrypted" || is_one_to_one(&self.storage, &pdu.room_id)? { "high" } else { "low" },
            "devices": [{
                "app_id": app_id,
                "pushkey": pushkey,
                "pushkey_ts": record.created_ms / 1000,
                "data": data,
                "tweaks": tweaks,
            }],
        });
        if format != "event_id_only" {
            payload["type"] = json!(pdu.kind.to_string());
            payload["sender"] = json!(pdu.sender);
            payload["content"] = pdu.content_value();
            payload["user_is_target"] = json!(pdu.state_key.as_deref() == Some(user.as_str()));
            let storage = &self.storage;
            if let Some(member) = rooms::current_state_event(
                storage,
                &pdu.room_id,
                "m.room.member",
                pdu.sender.as_str(),
            )? && let Some(name) = member.content_str("displayname")
            {
                payload["sender_display_name"] = json!(name);
            }
            if let Some(name) =
                rooms::current_state_event(storage, &pdu.room_id, "m.room.name", "")?
                    .and_then(|event| event.content_str("name"))
            {
                payload["room_name"] = json!(name);
            }
            if let Some(alias) =
                rooms::current_state_event(storage, &pdu.room_id, "m.room.canonical_alias", "")?
                    .and_then(|event| event.content_str("alias"))
            {
                payload["room_alias"] = json!(alias);
            }
        }
        Ok(Some(json!({ "notification": payload })))
    }

    async fn post(&self, url: &str, body: &JsonValue, pushkey: &str) -> Delivery {
        let answer = match self.client.post(url, body, GATEWAY_TIMEOUT).await {
            GatewayAnswer::Answered(answer) => answer,
            GatewayAnswer::Denied(reason) => return Delivery::Denied(reason),
            GatewayAnswer::Failed(reason) => return Delivery::Failed(reason),
        };
        let rejected = answer["rejected"]
            .as_array()
            .is_some_and(|keys| keys.iter().any(|key| key.as_str() == Some(pushkey)));
        if rejected { Delivery::Rejected } else { Delivery::Delivered }
    }

    /// Pushes what is waiting for each pusher; answers whether anything failed (retry later)
    /// and whether more is waiting (deliver again soon).
    async fn deliver(&self, user: &UserId) -> Result<(bool, bool)> {
        let mut failed = false;
        let mut more = false;
        let now = self.time.now_ms();
        for (key, record) in self.pushers(user)? {
            let (_, app_id, pushkey) = &key;
            let Some(url) = record.pusher["data"]["url"].as_str().map(str::to_owned) else {
                continue;
            };
            let delivered = PUSHER_PROGRESS_TABLE
                .get(self.storage.engine(), &key)?
                .unwrap_or(record.since_position);
            let mut waiting = Vec::new();
            NOTIFICATIONS_TABLE.scan(
                self.storage.engine(),
                &Prefix::of(user),
                Some(&(user.to_owned(), delivered.saturating_add(1))),
                Direction::Forward,
                |(_, position), Json(notification)| {
                    if waiting.len() >= ROUND {
                        more = true;
                        return ControlFlow::Break(());
                    }
                    waiting.push((position, notification));
                    ControlFlow::Continue(())
                },
            )?;
            let mut progress = delivered;
            let mut removed = false;
            for (position, notification) in waiting {
                if now.saturating_sub(notification.ts) <= MAX_AGE_MS
                    && let Some(body) =
                        self.payload(user, &record, pushkey, app_id, &notification)?
                {
                    match self.post(&url, &body, pushkey).await {
                        Delivery::Delivered => {
                            metrics::counter!("tuwunel_push_sent_total").increment(1)
                        }
                        Delivery::Rejected => {
                            metrics::counter!("tuwunel_push_failures_total", "reason" => "rejected").increment(1);
                            tracing::info!(%user, app_id, "push gateway rejected the pushkey; removing the pusher");
                            self.remove(&key).await?;
                            removed = true;
                            break;
                        }
                        Delivery::Denied(reason) => {
                            metrics::counter!("tuwunel_push_failures_total", "reason" => "denied")
                                .increment(1);
                            tracing::info!(%user, app_id, %reason, "push gateway address refused; notification dropped");
                        }
                        Delivery::Failed(reason) => {
                            metrics::counter!("tuwunel_push_failures_total", "reason" => "unreachable").increment(1);
                            tracing::debug!(%user, app_id, %reason, "push delivery failed; will retry");
                            failed = true;
                            break;
                        }
                    }
                }
                progress = position;
            }
            if !removed && progress != delivered {
                let mut batch = Batch::new();
                PUSHER_PROGRESS_TABLE.put(&mut batch, &key, &progress);
                self.storage.writer().commit(batch).await?;
            }
        }
        Ok((failed, more))
    }
}

/// The `set_tweak` actions as the gateway's `tweaks` object.
fn tweaks(actions: &JsonValue) -> JsonValue {
    let mut tweaks = serde_json::Map::new();
    for action in actions.as_array().into_iter().flatten() {
        if let Some(name) = action.get("set_tweak").and_then(JsonValue::as_str) {
            tweaks.insert(
                name.to_owned(),
                action.get("value").cloned().unwrap_or(JsonValue::Bool(true)),
            );
        }
    }
    JsonValue::Object(tweaks)
}

/// A room of exactly two joined members counts as a conversation worth waking a phone for.
fn is_one_to_one(storage: &Storage, room_id: &ruma::RoomId) -> Result<bool> {
    let Some(record) = rooms::room(storage, room_id)? else { return Ok(false) };
    Ok(rooms::timeline::joined_members(storage, record.short)?.len() == 2)
}

impl Behaviour for PusherActor {
    type Key = OwnedUserId;
    type Message = PusherMessage;
    type State = PusherState;

    const KIND: &'static str = "pusher";

    async fn start(&self, _user: &OwnedUserId) -> Result<PusherState> {
        Ok(PusherState { backoff: None, retry_pending: false })
    }

    async fn handle(
        &self,
        context: &Context<Self>,
        message: PusherMessage,
        state: &mut PusherState,
    ) -> Result<()> {
        let user = &context.key;
        match message {
            PusherMessage::Set { app_id, pushkey, record, reply } => {
                let _ = reply.send(self.set(user, app_id, pushkey, record).await);
            }
            PusherMessage::Remove { app_id, pushkey, reply } => {
                let _ = reply.send(self.remove(&(user.clone(), app_id, pushkey)).await);
            }
            PusherMessage::RemoveAll { reply } => {
                let mut result = Ok(());
                for (key, _) in self.pushers(user)? {
                    result = result.and(self.remove(&key).await);
                }
                let _ = reply.send(result);
            }
            PusherMessage::Wake => {
                // While a retry is pending, new notifications wait for it.
                if !state.retry_pending {
                    self.round(context, state).await?;
                }
            }
            PusherMessage::Retry => {
                state.retry_pending = false;
                self.round(context, state).await?;
            }
        }
        Ok(())
    }

    fn can_passivate(&self, state: &PusherState) -> bool {
        !state.retry_pending
    }
}

impl PusherActor {
    async fn round(&self, context: &Context<Self>, state: &mut PusherState) -> Result<()> {
        let (failed, more) = self.deliver(&context.key).await?;
        if failed {
            let next = state.backoff.map_or(FIRST_RETRY, |backoff| (backoff * 2).min(LAST_RETRY));
            state.backoff = Some(next);
            state.retry_pending = true;
            context.send_after(next, PusherMessage::Retry);
        } else {
            state.backoff = None;
            if more {
                context.send_after(Duration::ZERO, PusherMessage::Wake);
            }
        }
        Ok(())
    }
}

/// The push service: the rules cache and the pusher actors.
pub struct Push {
    pub rules: super::rules::RulesCache,
    pub pushers: Registry<PusherActor>,
    /// Users who have (or have had, since the start) a pusher: only they need waking. In a
    /// large room most members have none, and waking each would start an actor per member
    /// per message.
    with_pushers: Arc<DashSet<OwnedUserId>>,
}

impl Push {
    pub async fn start(
        config: &Config,
        storage: Arc<Storage>,
        system: &ActorSystem,
        time: Time,
    ) -> Result<Self> {
        let client = GatewayClient::new(config)?;
        let limits = Limits {
            idle_timeout: Duration::from_secs(config.actor_idle_timeout_s.max(1)),
            mailbox_limit: config.actor_mailbox_limit.max(1),
        };
        let with_pushers = Arc::new(DashSet::new());
        let actor = PusherActor {
            storage: Arc::clone(&storage),
            client,
            with_pushers: Arc::clone(&with_pushers),
            time,
        };
        let pushers = system.registry(actor, limits).await?;
        let push = Self { rules: super::rules::RulesCache::default(), pushers, with_pushers };
        // Anything left undelivered before a restart goes out now.
        let mut users = Vec::new();
        PUSHERS_TABLE.scan_keys(
            storage.engine(),
            &Prefix::all(),
            None,
            Direction::Forward,
            |(user, _, _)| {
                if users.last() != Some(&user) {
                    users.push(user);
                }
                ControlFlow::Continue(())
            },
        )?;
        for user in users {
            push.with_pushers.insert(user.clone());
            push.wake(&user).await;
        }
        Ok(push)
    }

    /// Tells `user`'s pusher actor that notifications may be waiting.
    pub async fn wake(&self, user: &UserId) {
        if !self.with_pushers.contains(user) {
            return;
        }
        let _ = self.pushers.send(&user.to_owned(), PusherMessage::Wake).await;
    }
}

/// A room's commit wakes the pushers of the users its events notified.
impl CommitListener for Push {
    fn committed<'a>(&'a self, commit: &'a RoomCommit) -> Pending<'a> {
        if commit.notified.is_empty() {
            return done();
        }
        Box::pin(async move {
            for user in &commit.notified {
                self.wake(user).await;
            }
        })
    }
}
