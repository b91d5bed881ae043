//! A join of this server's user to a room that lives on other servers, once a resident
//! answered it (`rooms::federation::join`): the room's state and its auth chain are stored
//! as outliers, in auth order, each checked against its own auth events (one that fails,
//! or names an event the answer left out, is stored as rejected); the state that remains
//! becomes the state before the join; the join, checked against it, becomes the room's one
//! forward extremity, and every member of that state gets their membership row.
//!
//! The outliers are committed first, in chunks (harmless if the join then fails: nothing
//! points at them); the room record, the join and the memberships in one last commit. The
//! join is not handed to the outbox: the resident that took it relays it to the room.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet},
    sync::Arc,
};

use axum::http::StatusCode;
use ruma::{
    EventId, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId, events::StateEventType,
    room_version_rules::RoomVersionRules,
};

use super::{
    Loaded, RoomActor, RoomState, Sent, accept::Committed, build::authorize, resolve::Before,
};
use crate::{
    Error, Result,
    rooms::{
        self, Pdu,
        pdu::state_key_bytes,
        state::{self, StateMap},
        state_res::ResEvent,
    },
    storage::{
        Batch, Namespace,
        codec::Json,
        dag::BACKWARD_EXTREMITIES_TABLE,
        rooms::{EVENT_META_TABLE, EventMeta, EventStatus, PDUS_TABLE, ROOMS_TABLE, RoomRecord},
        shortid::Interner,
    },
};

/// Outliers written per commit.
const OUTLIER_CHUNK: usize = 1_000;

/// What a resident answered to this server's join, checked already (format, signatures,
/// hashes, the create event).
#[derive(Debug)]
pub struct JoinedState {
    pub version: RoomVersionId,
    /// The state and its auth chain, each event once, in any order.
    pub events: Vec<Pdu>,
    /// The ids of the state before the join, among `events`.
    pub state: Vec<OwnedEventId>,
    /// The join, as this server signed it (and the resident countersigned, if it did).
    pub join: Pdu,
}

/// An outlier of the answer as stored: its short id, the event, and whether it was rejected.
struct Stored {
    short: u64,
    pdu: Arc<Pdu>,
    rejected: bool,
}

impl RoomActor {
    /// Stores a remote join's answer and makes the join the room's head.
    pub(super) async fn complete_join(
        &self,
        room_id: &OwnedRoomId,
        state: &mut RoomState,
        joined: JoinedState,
    ) -> Result<(Sent, Committed)> {
        if let Some(room) = &state.room
            && self
                .joined_members(room)?
                .iter()
                .any(|member| member.server_name() == self.server_name)
        {
            return Err(Error::matrix(
                StatusCode::CONFLICT,
                ruma::api::error::ErrorKind::Unknown,
                "A user of this server joined the room meanwhile.",
            ));
        }
        let JoinedState { version, events, state: state_ids, join } = joined;
        if join.room_id != *room_id {
            return Err(Error::internal("the join is not of this room"));
        }
        let rules = version
            .rules()
            .ok_or_else(|| Error::internal(format!("unsupported room version {version}")))?;
        let room_short = match &state.room {
            Some(room) => room.short,
            None => {
                self.storage
                    .interner()
                    .intern(&self.storage, Namespace::RoomId, room_id.as_bytes())
                    .await?
            }
        };
        let stored = self.store_outliers(room_id, room_short, &rules, events).await?;

        // The state before the join: the answer's state events that passed.
        let mut map = StateMap::new();
        let mut by_key: HashMap<(String, String), Arc<Pdu>> = HashMap::new();
        for id in &state_ids {
            let Some(event) = stored.get(id).filter(|event| !event.rejected) else { continue };
            let Some(state_key) = &event.pdu.state_key else { continue };
            let kind = event.pdu.kind.to_string();
            let key = self
                .storage
                .interner()
                .intern(&self.storage, Namespace::StateKey, &state_key_bytes(&kind, state_key))
                .await?;
            map.insert(key, event.short);
            by_key.insert((kind, state_key.clone()), Arc::clone(&event.pdu));
        }
        let create = by_key
            .get(&("m.room.create".to_owned(), String::new()))
            .cloned()
            .ok_or_else(|| Error::forbidden("The room's create event did not pass its checks."))?;
        let mut batch = Batch::new();
        let (snapshot, _) =
            state::write_diff(&self.storage, &mut batch, None, &StateMap::new(), &map);
        self.storage.writer().commit(batch).await?;

        // The join, against that state.
        let join = Arc::new(join);
        let fetch_event = |event_id: &EventId| -> Result<Option<ResEvent>> {
            if let Some(event) = stored.get(event_id) {
                return Ok(Some(ResEvent {
                    pdu: Arc::clone(&event.pdu),
                    rejected: event.rejected,
                }));
            }
            Ok(None)
        };
        let fetch_state = |kind: &StateEventType, state_key: &str| -> Result<Option<ResEvent>> {
            Ok(by_key
                .get(&(kind.to_string(), state_key.to_owned()))
                .map(|pdu| ResEvent::in_state(Arc::clone(pdu))))
        };
        let checked = ResEvent { pdu: Arc::clone(&join), rejected: false };
        authorize(&rules.authorization, &checked, fetch_event, fetch_state).map_err(|error| {
            if error.status() == StatusCode::FORBIDDEN {
                Error::forbidden(format!("The room's state does not allow the join: {error}"))
            } else {
                error
            }
        })?;

        let is_new = state.room.is_none();
        let mut room = match state.room.take() {
            // Rejoining a room left earlier: what the room held is stale, the answer's state
            // replaces it (the change of each key is what the membership rows follow).
            Some(mut room) => {
                room.heads.clear();
                room
            }
            None => Loaded::empty(room_id.clone(), room_short, rules.clone()),
        };
        let mut batch = Batch::new();
        if is_new {
            ROOMS_TABLE.put(
                &mut batch,
                &room_id.to_string(),
                &Json(RoomRecord {
                    short: room_short,
                    version: version.clone(),
                    creator: create.sender.clone(),
                    created_ms: self.time.now_ms(),
                }),
            );
        }
        let known = rooms::event_short(&self.storage, &join.event_id)?;
        let before = Before::At { snapshot: Some(snapshot), map, walked: Vec::new() };
        let prepared = self
            .accept_with(&mut room, Arc::clone(&join), None, known, before, &mut batch)
            .await?
            .not_sent();
        // Where history before the join is to be fetched from.
        for prev in &join.prev_events {
            if !stored.contains_key(prev) && rooms::event_short(&self.storage, prev)?.is_none() {
                BACKWARD_EXTREMITIES_TABLE.put(
                    &mut batch,
                    &(room_short, prev.clone()),
                    &join.depth.saturating_sub(1),
                );
            }
        }
        let (mut sent, committed) = self.commit(&room, vec![prepared], batch).await?;
        state.room = Some(room);
        let sent = sent.pop().ok_or_else(|| Error::internal("commit returned no event"))?;
        Ok((sent, committed))
    }

    /// Checks the answer's events against their own auth events, in auth order, and stores
    /// them as outliers (or rejected). Events the room holds already keep their row.
    async fn store_outliers(
        &self,
        room_id: &RoomId,
        room_short: u64,
        rules: &RoomVersionRules,
        events: Vec<Pdu>,
    ) -> Result<HashMap<OwnedEventId, Stored>> {
        let mut stored: HashMap<OwnedEventId, Stored> = HashMap::with_capacity(events.len());
        let mut batch = Batch::new();
        let mut in_batch = 0usize;
        // Version 12 leaves the create event out of `auth_events`: it names every event's
        // create event implicitly, through the room id.
        let implicit = rules
            .authorization
            .room_create_event_id_as_room_id
            .then(|| create_id_of(room_id))
            .flatten();
        for pdu in auth_order(events, implicit.as_ref()) {
            let pdu = Arc::new(pdu);
            if let Some(short) = rooms::event_short(&self.storage, &pdu.event_id)? {
                match rooms::any_event_meta(self.storage.engine(), short)? {
                    Some(meta) if meta.room == room_short => {
                        let rejected = meta.status == EventStatus::Rejected;
                        stored.insert(pdu.event_id.clone(), Stored { short, pdu, rejected });
                    }
                    // An id another room holds (versions 1 and 2 let servers choose ids):
                    // left out, so whatever names it is rejected.
                    _ => {
                        tracing::debug!(event = %pdu.event_id, "a join answer's event id is taken")
                    }
                }
                continue;
            }
            let rejected = match check_outlier(rules, &pdu, implicit.as_ref(), &stored) {
                Ok(None) => false,
                Ok(Some(reason)) => {
                    tracing::debug!(event = %pdu.event_id, reason, "rejected a join answer's event");
                    true
                }
                Err(error) => return Err(error),
            };
            let short = self.storage.interner().allocate();
            Interner::record(&mut batch, Namespace::EventId, pdu.event_id.as_bytes(), short);
            PDUS_TABLE.put(&mut batch, &short, &pdu.to_bytes());
            EVENT_META_TABLE.put(
                &mut batch,
                &short,
                &Json(EventMeta {
                    room: room_short,
                    position: 0,
                    state_before: state::EMPTY,
                    state_after: state::EMPTY,
                    redacted: false,
                    transaction: None,
                    has_children: Some(false),
                    status: if rejected { EventStatus::Rejected } else { EventStatus::Outlier },
                    backfill: None,
                }),
            );
            stored.insert(pdu.event_id.clone(), Stored { short, pdu, rejected });
            in_batch += 1;
            if in_batch >= OUTLIER_CHUNK {
                self.storage.writer().commit(std::mem::take(&mut batch)).await?;
                in_batch = 0;
            }
        }
        if in_batch > 0 {
            self.storage.writer().commit(batch).await?;
        }
        Ok(stored)
    }
}

/// The id of `room_id`'s create event, where the room id is derived from it (version 12).
fn create_id_of(room_id: &RoomId) -> Option<OwnedEventId> {
    EventId::parse(format!("${}", room_id.as_str().trim_start_matches('!'))).ok()
}

/// Why an outlier is rejected (`Some`), checked against its own auth events (and the
/// `implicit` create event of version 12): each must be among those checked before it and
/// not rejected, and the auth rules must pass on them.
fn check_outlier(
    rules: &RoomVersionRules,
    pdu: &Arc<Pdu>,
    implicit: Option<&OwnedEventId>,
    checked: &HashMap<OwnedEventId, Stored>,
) -> Result<Option<String>> {
    let implicit = implicit.filter(|create| **create != pdu.event_id);
    for auth_id in pdu.auth_events.iter().chain(implicit) {
        match checked.get(auth_id) {
            Some(auth) if auth.rejected => {
                return Ok(Some(format!("its auth event {auth_id} was rejected")));
            }
            Some(_) => {}
            None => return Ok(Some(format!("its auth event {auth_id} is unknown"))),
        }
    }
    let fetch_event = |event_id: &EventId| -> Result<Option<ResEvent>> {
        Ok(checked
            .get(event_id)
            .map(|event| ResEvent { pdu: Arc::clone(&event.pdu), rejected: event.rejected }))
    };
    let by_key: HashMap<(String, String), Arc<Pdu>> = pdu
        .auth_events
        .iter()
        .chain(implicit)
        .filter_map(|id| checked.get(id))
        .filter_map(|auth| {
            Some(((auth.pdu.kind.to_string(), auth.pdu.state_key.clone()?), Arc::clone(&auth.pdu)))
        })
        .collect();
    let fetch_state = |kind: &StateEventType, state_key: &str| -> Result<Option<ResEvent>> {
        Ok(by_key
            .get(&(kind.to_string(), state_key.to_owned()))
            .map(|pdu| ResEvent::in_state(Arc::clone(pdu))))
    };
    let event = ResEvent { pdu: Arc::clone(pdu), rejected: false };
    match authorize(&rules.authorization, &event, fetch_event, fetch_state) {
        Ok(()) => Ok(None),
        Err(error) if error.status() == StatusCode::FORBIDDEN => Ok(Some(error.to_string())),
        Err(error) => Err(error),
    }
}

/// `events` so that each comes after the events among them that it names as auth events
/// (and after `implicit`, version 12's create event; Kahn's algorithm; among those ready,
/// shallower first, then by id). Events on a cycle come last, where their checks fail.
fn auth_order(events: Vec<Pdu>, implicit: Option<&OwnedEventId>) -> Vec<Pdu> {
    let index: HashMap<OwnedEventId, usize> =
        events.iter().enumerate().map(|(at, pdu)| (pdu.event_id.clone(), at)).collect();
    let mut waiting: Vec<usize> = vec![0; events.len()];
    let mut dependants: Vec<Vec<usize>> = vec![Vec::new(); events.len()];
    for (at, pdu) in events.iter().enumerate() {
        let named: HashSet<&OwnedEventId> = pdu.auth_events.iter().chain(implicit).collect();
        for auth in named {
            if let Some(&auth_at) = index.get(auth)
                && auth_at != at
            {
                waiting[at] += 1;
                dependants[auth_at].push(at);
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<(u64, OwnedEventId, usize)>> = events
        .iter()
        .enumerate()
        .filter(|(at, _)| waiting[*at] == 0)
        .map(|(at, pdu)| Reverse((pdu.depth, pdu.event_id.clone(), at)))
        .collect();
    let mut order = Vec::with_capacity(events.len());
    let mut placed = vec![false; events.len()];
    while let Some(Reverse((_, _, at))) = ready.pop() {
        order.push(at);
        placed[at] = true;
        for &dependant in &dependants[at] {
            waiting[dependant] -= 1;
            if waiting[dependant] == 0 {
                let pdu = &events[dependant];
                ready.push(Reverse((pdu.depth, pdu.event_id.clone(), dependant)));
            }
        }
    }
    order.extend((0..events.len()).filter(|at| !placed[*at]));
    let mut slots: Vec<Option<Pdu>> = events.into_iter().map(Some).collect();
    order.into_iter().filter_map(|at| slots[at].take()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdu(id: &str, depth: u64, auth: &[&str]) -> Pdu {
        let json = serde_json::json!({
            "event_id": format!("${id}:example.org"),
            "room_id": "!room:example.org",
            "sender": "@a:example.org",
            "origin_server_ts": 1,
            "type": "m.room.message",
            "content": {},
            "prev_events": [],
            "auth_events": auth.iter().map(|id| format!("${id}:example.org")).collect::<Vec<_>>(),
            "depth": depth,
        });
        Pdu::from_json(serde_json::from_value(json).expect("object")).expect("pdu")
    }

    fn ids(events: &[Pdu]) -> Vec<String> {
        events.iter().map(|pdu| pdu.event_id.localpart().to_owned()).collect()
    }

    #[test]
    fn auth_events_come_before_the_events_naming_them() {
        let events = vec![
            pdu("member", 2, &["create"]),
            pdu("power", 3, &["create", "member"]),
            pdu("create", 1, &[]),
            pdu("rules", 4, &["create", "power", "member", "elsewhere"]),
        ];
        assert_eq!(ids(&auth_order(events.clone(), None)), ["create", "member", "power", "rules"]);
        // Version 12: every event names the create event, without listing it.
        let v12 = vec![pdu("member", 1, &[]), pdu("create", 1, &[])];
        let create = EventId::parse("$create:example.org").expect("id");
        assert_eq!(ids(&auth_order(v12, Some(&create))), ["create", "member"]);
    }

    #[test]
    fn a_cycle_goes_last() {
        let events = vec![pdu("a", 1, &["b"]), pdu("b", 1, &["a"]), pdu("c", 5, &[])];
        assert_eq!(ids(&auth_order(events, None)), ["c", "a", "b"]);
    }
}
