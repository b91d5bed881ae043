//! Push rule evaluation for events about to commit: which local users each event notifies,
//! with which actions, and the rows that records (unread events, counts, the notification
//! list). Runs in the room's actor before the events' commit and its rows go into that same
//! commit, so no reader ever sees a message without its count.

use std::collections::BTreeMap;

use ruma::{
    OwnedRoomId, OwnedUserId, UInt,
    events::TimelineEventType,
    push::{Action, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx},
    serde::Raw,
};

use serde_json::Value as JsonValue;

use super::{counts, rules::RulesCache};
use crate::{
    Result,
    accounts::now_ms,
    rooms::Pdu,
    storage::{
        Batch, Storage,
        codec::Json,
        push::{
            NOTIFICATIONS_TABLE, NotificationRecord, UNREAD_EVENTS_TABLE, UnreadCounts,
            UnreadRecord,
        },
    },
};

/// What evaluation needs to know about the room at the event.
pub struct RoomContext {
    pub room_id: OwnedRoomId,
    pub room_short: u64,
    pub member_count: u64,
    pub power_levels: Option<PushConditionPowerLevelsCtx>,
    /// Local users who may be notified, with their display names in the room.
    pub recipients: Vec<(OwnedUserId, String)>,
}

/// One event to evaluate, the `index`th of its commit.
pub struct Evaluated<'a> {
    pub pdu: &'a Pdu,
    pub short: u64,
    pub index: usize,
    /// The thread root's event id when the event is in a thread.
    pub thread: Option<String>,
}

/// One user notified by one event: its rows are keyed by the event's stream position, which
/// the commit assigns.
pub struct Notification {
    user: String,
    index: usize,
    unread: UnreadRecord,
    record: NotificationRecord,
}

/// The outcome for one batch of events: rows to commit and who was notified.
#[derive(Default)]
pub struct Outcome {
    /// Rows that need no stream position (unread events a sender's own event reads).
    pub batch: Batch,
    pub notifications: Vec<Notification>,
    /// New counts per `(user, thread)` of the room, to stamp with the commit's position.
    pub counts: BTreeMap<(OwnedUserId, String), UnreadCounts>,
    pub notified: Vec<OwnedUserId>,
}

/// Adds the rows of `notifications` to `batch`, the `i`th event of the commit having stream
/// position `positions[i]`.
pub fn write_notifications(
    batch: &mut Batch,
    room_short: u64,
    notifications: Vec<Notification>,
    positions: &[u64],
) {
    for notification in notifications {
        let Some(position) = positions.get(notification.index).copied() else { continue };
        UNREAD_EVENTS_TABLE.put(
            batch,
            &(notification.user.clone(), room_short, position),
            &Json(notification.unread),
        );
        NOTIFICATIONS_TABLE.put(batch, &(notification.user, position), &Json(notification.record));
    }
}

fn is_highlight(actions: &[Action]) -> bool {
    actions.iter().any(Action::is_highlight)
}

/// Evaluates `events` (in order) for every recipient, adding to `outcome` (whose counts
/// may already hold changes the caller made, such as implicit read receipts).
pub async fn evaluate(
    storage: &Storage,
    rules: &RulesCache,
    room: &RoomContext,
    events: &[Evaluated<'_>],
    outcome: &mut Outcome,
) -> Result<()> {
    for event in events {
        // Only events a client shows can notify; the client JSON is what rules match.
        if event.pdu.kind == TimelineEventType::RoomRedaction {
            continue;
        }
        let json = event.pdu.client_json(serde_json::Map::new());
        let raw: Raw<JsonValue> = Raw::from_json(serde_json::value::to_raw_value(&json)?);
        let flattened = FlattenedJson::from_raw(&raw);
        let thread = event.thread.clone().unwrap_or_default();
        // One context, its user fields changed per recipient.
        let mut context = PushConditionRoomCtx::new(
            room.room_id.clone(),
            UInt::new_saturating(room.member_count),
            event.pdu.sender.clone(),
            String::new(),
        );
        if let Some(power_levels) = &room.power_levels {
            context = context.with_power_levels(power_levels.clone());
        }
        let mut notified = [0_u64; 2];
        for (user, display_name) in &room.recipients {
            if *user == event.pdu.sender {
                continue;
            }
            let ruleset = rules.get(storage, user)?;
            context.user_id.clone_from(user);
            context.user_display_name.clone_from(display_name);
            let mut actions: Option<Vec<Action>> = None;
            for rule in ruleset.iter() {
                if rule.applies(&flattened, &context).await {
                    actions = Some(rule.actions().to_vec());
                    break;
                }
            }
            let Some(actions) = actions.filter(|actions| actions.iter().any(Action::should_notify))
            else {
                continue;
            };
            let highlight = is_highlight(&actions);
            outcome.notifications.push(Notification {
                user: user.to_string(),
                index: event.index,
                unread: UnreadRecord { highlight, thread: thread.clone() },
                record: NotificationRecord {
                    room_id: room.room_id.to_string(),
                    event: event.short,
                    actions: serde_json::to_value(&actions)?,
                    highlight,
                    ts: now_ms(),
                },
            });
            let counts_key = (user.clone(), thread.clone());
            if !outcome.counts.contains_key(&counts_key) {
                // The room actor writes these counts, so the cache is current here.
                let stored = counts::cached_room_counts(storage, user, room.room_short)?
                    .get(&thread)
                    .cloned()
                    .unwrap_or_default();
                outcome.counts.insert(counts_key.clone(), stored);
            }
            if let Some(counts) = outcome.counts.get_mut(&counts_key) {
                counts.notifications += 1;
                counts.highlights += u64::from(highlight);
            }
            if !outcome.notified.contains(user) {
                outcome.notified.push(user.clone());
            }
            notified[usize::from(highlight)] += 1;
        }
        for (highlight, count) in ["false", "true"].into_iter().zip(notified) {
            if count > 0 {
                metrics::counter!("tuwunel_push_notifications_total", "highlight" => highlight)
                    .increment(count);
            }
        }
        metrics::counter!("tuwunel_push_events_evaluated_total").increment(1);
    }
    Ok(())
}
