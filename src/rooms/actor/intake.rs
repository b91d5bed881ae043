//! Events other servers send into the room, checked in the spec's order ("Checks performed
//! on receipt of a PDU") and stored with what they earned: a place in the timeline, a soft
//! fail (kept in the DAG, never shown, never a head), or a rejection (kept so that its
//! children are rejected too, its state never used).
//!
//! Checks 1 to 3 (format, signatures, hashes) need no room state and happen before the
//! event reaches the actor (`federation/events.rs`). Here, in order: the event belongs to
//! this room and this server is in it; its auth events are known and none was rejected;
//! check 4 (the auth rules against its auth events); its prev events are known; check 5
//! (against the state before it); check 6 (against the current state: a soft fail).
//!
//! An event whose auth or prev events are unknown is refused without storing anything:
//! fetching them from the sending server (and parking the event meanwhile) is the next
//! step of this work, see [`RoomActor::missing_auth_events`] and
//! [`RoomActor::missing_prev_events`].

use std::{collections::HashMap, sync::Arc};

use axum::http::StatusCode;
use ruma::{
    EventId, OwnedEventId, ServerName,
    events::{StateEventType, TimelineEventType},
};

use super::{
    Loaded, RoomActor,
    accept::Committed,
    build::authorize,
    resolve::{Before, prevs_are_heads},
};
use crate::{
    Result,
    rooms::{
        self, Pdu,
        pdu::state_key_bytes,
        state,
        state_res::{ResEvent, res_event},
    },
    storage::{
        Batch, Namespace,
        codec::Json,
        rooms::{EVENT_META_TABLE, EventMeta, EventStatus},
    },
};

/// How an event from another server reached this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// In a transaction (`/send`): the sender pushed it.
    Pushed,
    /// Through `send_join`: a join of the sending server's user, which this server relays.
    SendJoin,
}

/// What became of an event from another server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// Accepted into the room's timeline.
    Accepted,
    /// Passed the checks against its auth events and the state before it, failed against the
    /// current state: kept, not shown.
    SoftFailed,
    /// Failed the auth rules: kept as rejected, never shown.
    Rejected(String),
    /// Already in the room.
    Known,
    /// Not taken: nothing of it was stored.
    Dropped(String),
}

impl RoomActor {
    /// Runs the checks on `pdu`, which another server (`origin`) sent, and stores it with
    /// their verdict. `Committed` is set when a timeline event was committed.
    pub(super) async fn ingest(
        &self,
        room: &mut Loaded,
        pdu: Pdu,
        origin: &ServerName,
        arrival: Arrival,
    ) -> Result<(Ingested, Option<Committed>)> {
        if pdu.room_id != room.room_id {
            return Ok((Ingested::Dropped("The event is not in this room.".to_owned()), None));
        }
        // Stored already: known, unless it is an outlier (stored without its place in the
        // DAG), which this arrival places; its short id is kept.
        let known = match rooms::event_short(&self.storage, &pdu.event_id)? {
            Some(short) => match rooms::any_event_meta(self.storage.engine(), short)? {
                Some(meta) if meta.room != room.short => {
                    return Ok((
                        Ingested::Dropped("The event id is taken in another room.".to_owned()),
                        None,
                    ));
                }
                Some(meta) if meta.status != EventStatus::Outlier => {
                    return Ok((Ingested::Known, None));
                }
                _ => Some(short),
            },
            None => None,
        };
        if arrival == Arrival::SendJoin
            && let Some(reason) = not_a_join_by_its_sender(&pdu, origin)
        {
            return Ok((Ingested::Dropped(reason.to_owned()), None));
        }
        if !self.has_local_members(room)? {
            return Ok((
                Ingested::Dropped("This server has no member in the room.".to_owned()),
                None,
            ));
        }

        // Auth events: all known, none rejected.
        let mut auth_events: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
        let mut missing = Vec::new();
        let mut rejected = None;
        for auth_id in &pdu.auth_events {
            match self.stored_in_room(room, auth_id)? {
                Some((meta, auth)) => {
                    if meta.status == EventStatus::Rejected {
                        rejected = Some(auth_id.clone());
                    }
                    auth_events.insert(auth_id.clone(), auth);
                }
                None => missing.push(auth_id.clone()),
            }
        }
        if !missing.is_empty() {
            return Ok((self.missing_auth_events(&pdu, &missing), None));
        }
        // Prev events: known and placed in the DAG.
        let mut missing = Vec::new();
        for prev in &pdu.prev_events {
            match self.stored_in_room(room, prev)? {
                Some((meta, _)) if meta.status != EventStatus::Outlier => {}
                _ => missing.push(prev.clone()),
            }
        }
        if !missing.is_empty() {
            return Ok((self.missing_prev_events(&pdu, &missing), None));
        }
        let before = self.state_before(room, &pdu.prev_events).await?;

        let verdict = match rejected {
            Some(auth_id) => Err(format!("Its auth event {auth_id} was rejected.")),
            None => self.check_pdu(room, &pdu, &auth_events, &before, arrival)?,
        };
        let (status, outcome) = match verdict {
            Ok(EventStatus::SoftFailed) => (EventStatus::SoftFailed, Ingested::SoftFailed),
            Ok(_) => (EventStatus::Timeline, Ingested::Accepted),
            Err(reason) => {
                tracing::debug!(event = %pdu.event_id, %origin, reason, "rejected an event");
                (EventStatus::Rejected, Ingested::Rejected(reason))
            }
        };
        if status != EventStatus::Timeline {
            self.store_unshown(room, pdu, known, status, before).await?;
            return Ok((outcome, None));
        }
        let relay = (arrival == Arrival::SendJoin).then_some(origin);
        let committed = self.accept_remote(room, Arc::new(pdu), known, before, relay).await?;
        Ok((outcome, Some(committed)))
    }

    /// Checks 4 to 6: the auth rules against the event's auth events, against the state
    /// before it, and (for pushed events not on the heads) against the current state: the
    /// status the event earned, or the reason it is rejected. A storage failure is an error
    /// of this server and fails the whole ingest (an event is never rejected for it).
    fn check_pdu(
        &self,
        room: &Loaded,
        pdu: &Pdu,
        auth_events: &HashMap<OwnedEventId, Arc<Pdu>>,
        before: &Before,
        arrival: Arrival,
    ) -> Result<std::result::Result<EventStatus, String>> {
        let rules = &room.rules.authorization;
        // The caller refused the event when one of its auth events was rejected.
        let fetch_event = |event_id: &EventId| -> Result<Option<ResEvent>> {
            if let Some(auth) = auth_events.get(event_id) {
                return Ok(Some(ResEvent::in_state(Arc::clone(auth))));
            }
            match rooms::pdu_by_id(&self.storage, event_id)? {
                Some((short, found)) if found.room_id == room.room_id => {
                    res_event(&self.storage, short)
                }
                _ => Ok(None),
            }
        };
        let by_key: HashMap<(String, String), Arc<Pdu>> = auth_events
            .values()
            .filter_map(|auth| {
                Some(((auth.kind.to_string(), auth.state_key.clone()?), Arc::clone(auth)))
            })
            .collect();
        let from_auth_events = |kind: &StateEventType, state_key: &str| {
            if let Some(auth) = by_key.get(&(kind.to_string(), state_key.to_owned())) {
                return Ok(Some(ResEvent::in_state(Arc::clone(auth))));
            }
            // Version 12 never lists the create event: the room id names it, and it is the
            // same in every state of the room.
            if rules.room_create_event_id_as_room_id
                && *kind == StateEventType::RoomCreate
                && state_key.is_empty()
            {
                return Ok(self
                    .state_event_at(room, &Before::Current, kind, state_key)?
                    .map(ResEvent::in_state));
            }
            Ok(None)
        };
        let checked = ResEvent { pdu: Arc::new(pdu.clone()), rejected: false };
        // Check 4.
        if let Some(reason) = refusal(authorize(rules, &checked, fetch_event, from_auth_events))? {
            return Ok(Err(reason));
        }
        // Check 5.
        let before_state = |kind: &StateEventType, state_key: &str| {
            Ok(self.state_event_at(room, before, kind, state_key)?.map(ResEvent::in_state))
        };
        if let Some(reason) = refusal(authorize(rules, &checked, fetch_event, before_state))? {
            return Ok(Err(reason));
        }
        // Check 6, skipped when the event is on the heads (its state before is the current
        // state, checked just now). A join through `send_join` is held to it too (a user
        // banned since the template was made may not join).
        if matches!(arrival, Arrival::Pushed | Arrival::SendJoin)
            && !prevs_are_heads(&room.heads, &pdu.prev_events)
            && let Some(reason) = refusal(self.authorize(room, &checked.pdu, &HashMap::new()))?
        {
            tracing::debug!(event = %pdu.event_id, reason, "soft-failed an event");
            return Ok(Ok(EventStatus::SoftFailed));
        }
        Ok(Ok(EventStatus::Timeline))
    }

    /// The state event at `(kind, state_key)` in the state `before`.
    fn state_event_at(
        &self,
        room: &Loaded,
        before: &Before,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Option<Arc<Pdu>>> {
        let map = match before {
            Before::Current => &room.state,
            Before::At { map, .. } => map,
        };
        let Some(key) = state::short_key(&self.storage, &kind.to_string(), state_key)? else {
            return Ok(None);
        };
        let Some(short) = map.get(&key) else { return Ok(None) };
        if let Some(pdu) = room.cache.get(short) {
            return Ok(Some(Arc::clone(pdu)));
        }
        rooms::shared_pdu(&self.storage, *short)
    }

    /// A stored event of this room (any status) with its meta.
    fn stored_in_room(
        &self,
        room: &Loaded,
        event_id: &EventId,
    ) -> Result<Option<(EventMeta, Arc<Pdu>)>> {
        let Some(short) = rooms::event_short(&self.storage, event_id)? else { return Ok(None) };
        let Some(meta) = rooms::any_event_meta(self.storage.engine(), short)? else {
            return Ok(None);
        };
        if meta.room != room.short {
            return Ok(None);
        }
        Ok(rooms::shared_pdu(&self.storage, short)?.map(|pdu| (meta, pdu)))
    }

    /// An event whose auth events are not all known here. Asking the sender for them
    /// (`/event_auth`) and parking the event meanwhile is not built yet: refused, nothing
    /// stored, so a later resend is checked afresh.
    fn missing_auth_events(&self, pdu: &Pdu, missing: &[OwnedEventId]) -> Ingested {
        tracing::debug!(event = %pdu.event_id, ?missing, "refused an event: unknown auth events");
        Ingested::Dropped(format!("missing auth_events: {} unknown here", missing.len()))
    }

    /// An event whose prev events are not all in the room's DAG here. Asking the sender for
    /// them (`/get_missing_events`) and parking the event meanwhile is not built yet:
    /// refused, nothing stored, so a resend after the prevs arrived is checked afresh.
    fn missing_prev_events(&self, pdu: &Pdu, missing: &[OwnedEventId]) -> Ingested {
        tracing::debug!(event = %pdu.event_id, ?missing, "refused an event: unknown prev events");
        Ingested::Dropped(format!("missing prev_events: {} unknown here", missing.len()))
    }

    /// Stores a soft-failed or rejected event: in the DAG with its states, never shown, not
    /// a head, no stream position.
    async fn store_unshown(
        &self,
        room: &mut Loaded,
        pdu: Pdu,
        known: Option<u64>,
        status: EventStatus,
        before: Before,
    ) -> Result<()> {
        let short = known.unwrap_or_else(|| self.storage.interner().allocate());
        let key = match &pdu.state_key {
            Some(state_key) if status != EventStatus::Rejected => Some(
                self.storage
                    .interner()
                    .intern(
                        &self.storage,
                        Namespace::StateKey,
                        &state_key_bytes(&pdu.kind.to_string(), state_key),
                    )
                    .await?,
            ),
            _ => None,
        };
        let mut batch = Batch::new();
        let placed = self.place(room, &pdu, short, key, status, before, &mut batch).await?;
        EVENT_META_TABLE.put(
            &mut batch,
            &short,
            &Json(EventMeta {
                room: room.short,
                position: 0,
                state_before: placed.state_before,
                state_after: placed.state_after,
                redacted: false,
                transaction: None,
                has_children: Some(false),
                status,
                backfill: None,
            }),
        );
        self.storage.writer().commit(batch).await
    }

    /// Accepts a checked timeline event from another server: as a local one, plus a
    /// redaction of an event of the room when its sender may redact it; relayed to the
    /// room's other servers but `relay`, its origin, when set.
    async fn accept_remote(
        &self,
        room: &mut Loaded,
        pdu: Arc<Pdu>,
        known: Option<u64>,
        before: Before,
        relay: Option<&ServerName>,
    ) -> Result<Committed> {
        let redaction_target = self.remote_redaction_target(room, &pdu)?;
        let mut batch = Batch::new();
        let mut prepared =
            self.accept_with(room, Arc::clone(&pdu), None, known, before, &mut batch).await?;
        if let Some(origin) = relay {
            prepared = prepared.relayed_for(origin);
        }
        let mut rewritten = Vec::new();
        if let Some((target_short, target)) = redaction_target {
            self.apply_redaction(room, target_short, &target, &pdu, &mut batch)?;
            room.cache.remove(&target_short);
            rewritten.push(target_short);
        }
        let _rewriting = self.storage.events().rewriting(rewritten);
        let (_, committed) = self.commit(room, vec![prepared], batch).await?;
        Ok(committed)
    }

    /// The event a remote redaction takes effect on: one of this room's timeline events,
    /// not redacted yet, sent from the redaction's server or by anyone when the redaction's
    /// sender may redact others' events (the spec's rule for room versions 3 and later; an
    /// unknown target stays as it is when it arrives later, which is not handled yet).
    fn remote_redaction_target(&self, room: &Loaded, pdu: &Pdu) -> Result<Option<(u64, Pdu)>> {
        if pdu.kind != TimelineEventType::RoomRedaction {
            return Ok(None);
        }
        let Some(target_id) = &pdu.redacts else { return Ok(None) };
        let Some((short, target)) = rooms::pdu_by_id(&self.storage, target_id)? else {
            return Ok(None);
        };
        let Some(meta) = rooms::any_event_meta(self.storage.engine(), short)? else {
            return Ok(None);
        };
        if meta.room != room.short || meta.redacted || !meta.status.is_timeline() {
            return Ok(None);
        }
        let allowed = target.sender.server_name() == pdu.sender.server_name()
            || self.powers(room)?.levels().user_can_redact_event_of_other(&pdu.sender);
        Ok(allowed.then_some((short, target)))
    }

    /// Whether one of this server's users is joined to the room.
    fn has_local_members(&self, room: &Loaded) -> Result<bool> {
        Ok(self.joined_members(room)?.iter().any(|member| member.server_name() == self.server_name))
    }
}

/// The auth rules' refusal in `result` (a 403), if any; any other error stays an error.
fn refusal(result: Result<()>) -> Result<Option<String>> {
    match result {
        Ok(()) => Ok(None),
        Err(error) if error.status() == StatusCode::FORBIDDEN => Ok(Some(error.to_string())),
        Err(error) => Err(error),
    }
}

/// Why `pdu` is not what `send_join` takes: a join of its sender, from the sender's server.
fn not_a_join_by_its_sender(pdu: &Pdu, origin: &ServerName) -> Option<&'static str> {
    if pdu.kind != TimelineEventType::RoomMember {
        return Some("The event is not a membership event.");
    }
    if pdu.state_key.as_deref() != Some(pdu.sender.as_str()) {
        return Some("The event's state_key is not its sender.");
    }
    if pdu.content_str("membership").as_deref() != Some("join") {
        return Some("The event is not a join.");
    }
    if pdu.sender.server_name() != origin {
        return Some("The joining user is not of the sending server.");
    }
    None
}
