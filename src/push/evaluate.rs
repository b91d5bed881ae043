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
    actors::contain::{contained, contained_sync},
    limits,
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
    /// When the events are evaluated (the notifications' `ts`), in ms since the epoch.
    pub now_ms: u64,
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
    user: OwnedUserId,
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

/// The event as push rules see it (its client format, flattened), or `None` when it cannot
/// be evaluated: ruma re-parses the event with serde_json, which panics on JSON nested
/// deeper than it parses (with a `panic` it would fail the room's actor). Request bodies are
/// far shallower ([`limits::MAX_JSON_DEPTH`]); this guards against events that came
/// another way, and [`contained_sync`] against what else may be lurking in ruma.
fn flatten(pdu: &Pdu) -> Option<FlattenedJson> {
    let json = pdu.client_json(serde_json::Map::new());
    if limits::json_depth(&json) > limits::PARSER_MAX_DEPTH {
        tracing::warn!(event = %pdu.event_id, "event nested too deep for push rules; skipped");
        return None;
    }
    let raw: Raw<JsonValue> = Raw::from_json(serde_json::value::to_raw_value(&json).ok()?);
    contained_sync(|| FlattenedJson::from_raw(&raw))
        .map_err(|panic| {
            tracing::error!(event = %pdu.event_id, %panic, "flattening an event for push rules panicked");
        })
        .ok()
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
        let Some(flattened) = flatten(event.pdu) else { continue };
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
            let matched = contained(async {
                for rule in ruleset.iter() {
                    if rule.applies(&flattened, &context).await {
                        return Some(rule.actions().to_vec());
                    }
                }
                None
            })
            .await;
            let actions = matched.unwrap_or_else(|panic| {
                tracing::error!(
                    event = %event.pdu.event_id,
                    %user,
                    %panic,
                    "push rule evaluation panicked; the event does not notify this user"
                );
                None
            });
            let Some(actions) = actions.filter(|actions| actions.iter().any(Action::should_notify))
            else {
                continue;
            };
            let highlight = is_highlight(&actions);
            outcome.notifications.push(Notification {
                user: user.clone(),
                index: event.index,
                unread: UnreadRecord { highlight, thread: thread.clone() },
                record: NotificationRecord {
                    room_id: room.room_id.clone(),
                    event: event.short,
                    actions: serde_json::to_value(&actions)?,
                    highlight,
                    ts: room.now_ms,
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

#[cfg(test)]
mod tests {
    use ruma::{
        owned_room_id, owned_user_id,
        push::{EventMatchConditionData, PushCondition},
        uint,
    };
    use serde_json::json;

    use super::*;

    /// Whether `condition` applies to a message saying "hello", or the panic it caused.
    async fn applies(condition: PushCondition, display_name: &str) -> Result<bool, String> {
        let event = json!({
            "type": "m.room.message",
            "content": { "msgtype": "m.text", "body": "hello" },
            "sender": "@alice:example.org",
            "room_id": "!room:example.org",
        });
        let raw: Raw<JsonValue> =
            Raw::from_json(serde_json::value::to_raw_value(&event).expect("raw"));
        let flattened = FlattenedJson::from_raw(&raw);
        let context = PushConditionRoomCtx::new(
            owned_room_id!("!room:example.org"),
            uint!(2),
            owned_user_id!("@bob:example.org"),
            display_name.to_owned(),
        );
        contained(async { condition.applies(&flattened, &context).await }).await
    }

    #[allow(deprecated)]
    #[tokio::test]
    async fn wildcard_strings_within_our_bounds_cannot_panic_ruma() {
        // ruma builds a regular expression from a wildcard pattern matched against a body;
        // `?a` repeated is the largest expression per character.
        let name = "?a".repeat(limits::MAX_DISPLAYNAME_CHARS / 2);
        assert_eq!(applies(PushCondition::ContainsDisplayName, &name).await, Ok(false));
        let pattern = "?a".repeat(limits::MAX_PUSH_PATTERN_CHARS / 2);
        let condition =
            PushCondition::EventMatch(EventMatchConditionData::new("content.body".into(), pattern));
        assert_eq!(applies(condition, "bob").await, Ok(false));
        // Far beyond them it panics, which is why the bounds exist (and why evaluation is
        // contained all the same).
        let name = "?a".repeat(30_000);
        assert!(applies(PushCondition::ContainsDisplayName, &name).await.is_err());
    }

    #[test]
    fn events_deeper_than_serde_json_parses_are_not_evaluated() {
        // Content as deep as serde_json parses: the event around it is one level deeper.
        let mut content = json!({ "body": "deep" });
        for _ in 1..limits::PARSER_MAX_DEPTH {
            content = json!({ "a": content });
        }
        let event = json!({
            "type": "m.room.message",
            "content": content,
            "sender": "@alice:example.org",
            "room_id": "!room:example.org",
            "event_id": "$deep",
            "origin_server_ts": 1,
            "depth": 1,
            "prev_events": [],
            "auth_events": [],
        });
        let object = match ruma::CanonicalJsonValue::try_from(event) {
            Ok(ruma::CanonicalJsonValue::Object(object)) => object,
            other => panic!("not an object: {other:?}"),
        };
        let pdu = Pdu::from_json(object).expect("event");
        let raw: Raw<JsonValue> = Raw::from_json(
            serde_json::value::to_raw_value(&pdu.client_json(serde_json::Map::new())).expect("raw"),
        );
        assert!(
            contained_sync(|| FlattenedJson::from_raw(&raw)).is_err(),
            "ruma no longer panics on this event"
        );
        assert!(flatten(&pdu).is_none());
    }
}
