//! The room's DAG as its actor holds it: the forward extremities ("heads") with the state
//! after each, the state before and after an accepted event, and the current state over the
//! heads.
//!
//! A local event is built on every head, so its state before is the current state and its
//! state after becomes the current state: the fast path costs a comparison of two small id
//! sets. Only an event on other prev events (another server's), or heads whose states differ,
//! reaches state resolution, which runs on the blocking pool.

use std::collections::HashSet;

use ruma::{EventId, OwnedEventId, OwnedUserId, UserId, events::room::member::MembershipState};

use super::{Loaded, RoomActor};
use crate::{
    Error, Result,
    rooms::{
        self, Pdu,
        state::{self, StateMap},
        state_res,
    },
    storage::{
        Batch, Namespace,
        codec::Json,
        dag::{AUTH_CHAINS_TABLE, AuthChain},
        rooms::{EVENT_META_TABLE, EventMeta, EventStatus, MembershipRecord, PDUS_TABLE},
        shortid::Interner,
    },
};

/// A forward extremity: an accepted timeline event nothing accepted refers to yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Head {
    pub event_id: OwnedEventId,
    pub short: u64,
    /// The state after the event.
    pub state_after: u64,
    pub depth: u64,
}

/// A state key whose event changed in the room's current state: `(key, old, new)`, `None`
/// where the key is absent (a resolution can drop one).
pub(super) type Change = (u64, Option<u64>, Option<u64>);

/// Where an accepted event sits in the room's state: its snapshots, and the changes of the
/// room's current state.
pub(super) struct Placed {
    pub state_before: u64,
    pub state_after: u64,
    pub changed: Vec<Change>,
}

/// The state before an event.
pub(super) enum Before {
    /// Its prevs are the heads: the current state, which the actor holds.
    Current,
    /// A stored snapshot (`Some`), or a resolved state not written yet, with the auth chains
    /// its resolution walked (stored with it).
    At { snapshot: Option<u64>, map: StateMap, walked: Vec<(u64, AuthChain)> },
}

/// Whether `prevs` are exactly the heads, as sets: then the state before an event on them
/// is the current state.
pub(super) fn prevs_are_heads(heads: &[Head], prevs: &[OwnedEventId]) -> bool {
    if heads.len() > prevs.len() {
        return false;
    }
    let prevs: HashSet<&EventId> = prevs.iter().map(|id| &**id).collect();
    prevs.len() == heads.len() && heads.iter().all(|head| prevs.contains(&*head.event_id))
}

/// The heads once `head` is accepted: its prev events stop being heads, it becomes one.
pub(super) fn advance_heads(heads: &mut Vec<Head>, prevs: &[OwnedEventId], head: Head) {
    heads.retain(|existing| !prevs.contains(&existing.event_id));
    if !heads.iter().any(|existing| existing.event_id == head.event_id) {
        heads.push(head);
    }
}

/// The ids of the heads a new local event refers to: all of them, or the `limit` deepest.
pub(super) fn prev_events_for(heads: &[Head], limit: usize) -> Vec<OwnedEventId> {
    if heads.len() <= limit {
        return heads.iter().map(|head| head.event_id.clone()).collect();
    }
    let mut deepest: Vec<&Head> = heads.iter().collect();
    deepest.sort_by(|a, b| b.depth.cmp(&a.depth).then_with(|| a.event_id.cmp(&b.event_id)));
    deepest.into_iter().take(limit).map(|head| head.event_id.clone()).collect()
}

impl RoomActor {
    /// Reads the stored heads back: each one's short id, state after and depth.
    pub(super) fn load_heads(&self, extremities: &[OwnedEventId]) -> Result<Vec<Head>> {
        let mut heads = Vec::with_capacity(extremities.len());
        for event_id in extremities {
            let missing = || Error::internal(format!("forward extremity {event_id} is not stored"));
            let short = rooms::event_short(&self.storage, event_id)?.ok_or_else(missing)?;
            let meta = rooms::any_event_meta(self.storage.engine(), short)?.ok_or_else(missing)?;
            let depth = rooms::shared_pdu(&self.storage, short)?.ok_or_else(missing)?.depth;
            heads.push(Head {
                event_id: event_id.clone(),
                short,
                state_after: meta.state_after,
                depth,
            });
        }
        Ok(heads)
    }

    /// The state before an event on `prevs`: the current state when they are the heads
    /// (every local event), else the state after the one prev, or the resolution of the
    /// states after them. Every prev must be in the room's DAG (not an outlier).
    pub(super) async fn state_before(
        &self,
        room: &Loaded,
        prevs: &[OwnedEventId],
    ) -> Result<Before> {
        if prevs_are_heads(&room.heads, prevs) {
            return Ok(Before::Current);
        }
        let mut snapshots = Vec::with_capacity(prevs.len());
        for prev in prevs {
            let meta = rooms::event_short(&self.storage, prev)?
                .map(|short| rooms::any_event_meta(self.storage.engine(), short))
                .transpose()?
                .flatten()
                .filter(|meta| meta.status != EventStatus::Outlier && meta.room == room.short)
                .ok_or_else(|| {
                    Error::internal(format!("prev event {prev} is not in the room's DAG"))
                })?;
            snapshots.push(meta.state_after);
        }
        snapshots.sort_unstable();
        snapshots.dedup();
        Ok(match snapshots.as_slice() {
            [one] => Before::At {
                snapshot: Some(*one),
                map: state::load(&self.storage, *one)?,
                walked: Vec::new(),
            },
            _ => {
                let resolved = state_res::resolve_blocking(
                    self.storage.clone(),
                    room.rules.clone(),
                    snapshots,
                )
                .await?;
                Before::At {
                    snapshot: None,
                    map: resolved.state,
                    walked: resolved.walked_auth_chains,
                }
            }
        })
    }

    /// Places `pdu` (short id `short`, state key `key` if it is a state event) in the room
    /// with `status`, on the state `before` it: its state after, and for a timeline event
    /// the heads and the current state. A rejected event's state after is its state before.
    ///
    /// On the fast path (its prevs are the heads, every local event) everything goes in
    /// `batch`. A timeline event elsewhere in the DAG is first committed as an outlier with
    /// its snapshots (so that a resolution over the heads can read it; a crash before
    /// `batch` commits leaves a harmless outlier), and the rest goes in `batch`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn place(
        &self,
        room: &mut Loaded,
        pdu: &Pdu,
        short: u64,
        key: Option<u64>,
        status: EventStatus,
        before: Before,
        batch: &mut Batch,
    ) -> Result<Placed> {
        let head = |state_after| Head {
            event_id: pdu.event_id.clone(),
            short,
            state_after,
            depth: pdu.depth,
        };
        let key = key.filter(|_| status != EventStatus::Rejected);
        let timeline = status == EventStatus::Timeline;
        if let Before::Current = before
            && (timeline || key.is_none())
        {
            Interner::record(batch, Namespace::EventId, pdu.event_id.as_bytes(), short);
            PDUS_TABLE.put(batch, &short, &pdu.to_bytes());
            let before = room.snapshot;
            if !timeline {
                return Ok(Placed {
                    state_before: before,
                    state_after: before,
                    changed: Vec::new(),
                });
            }
            let mut changed = Vec::new();
            if let Some(key) = key {
                let parent = self.current_parent(room);
                let replaced = room.state.insert(key, short);
                let (snapshot, chain) =
                    state::write(&self.storage, batch, parent, &room.state, &[(key, short)]);
                room.snapshot = snapshot;
                room.chain = chain;
                if let Some(replaced) = replaced {
                    room.event_ids.remove(&replaced);
                }
                room.event_ids.insert(short, pdu.event_id.clone());
                changed.push((key, replaced, Some(short)));
            }
            room.heads = vec![head(room.snapshot)];
            return Ok(Placed { state_before: before, state_after: room.snapshot, changed });
        }

        let mut stage = Batch::new();
        let rows = if timeline { &mut stage } else { &mut *batch };
        let (before, before_map) = match before {
            Before::Current => (room.snapshot, room.state.clone()),
            Before::At { snapshot: Some(snapshot), map, .. } => (snapshot, map),
            Before::At { snapshot: None, map, walked } => {
                for (event, chain) in &walked {
                    AUTH_CHAINS_TABLE.put(rows, event, chain);
                }
                let parent = self.current_parent(room);
                let (id, _) = state::write_diff(&self.storage, rows, parent, &room.state, &map);
                (id, map)
            }
        };
        let (after, after_map) = match key {
            Some(key) => {
                let mut after_map = before_map;
                after_map.insert(key, short);
                let parent = self.current_parent(room);
                let (id, _) =
                    state::write_diff(&self.storage, rows, parent, &room.state, &after_map);
                (id, after_map)
            }
            None => (before, before_map),
        };
        Interner::record(rows, Namespace::EventId, pdu.event_id.as_bytes(), short);
        PDUS_TABLE.put(rows, &short, &pdu.to_bytes());
        if !timeline {
            return Ok(Placed { state_before: before, state_after: after, changed: Vec::new() });
        }
        EVENT_META_TABLE.put(
            &mut stage,
            &short,
            &Json(EventMeta {
                room: room.short,
                position: 0,
                state_before: before,
                state_after: after,
                redacted: false,
                transaction: None,
                has_children: Some(false),
                status: EventStatus::Outlier,
                backfill: None,
            }),
        );
        self.storage.writer().commit(stage).await?;

        advance_heads(&mut room.heads, &pdu.prev_events, head(after));
        let changed = self.resolve_current(room, Some((after, after_map)), batch).await?;
        Ok(Placed { state_before: before, state_after: after, changed })
    }

    /// Recomputes the current state over the heads; writes it (in `batch`) and sets it in
    /// memory when it changed. `known` is a snapshot whose map the caller holds already.
    /// Returns the state keys whose event changed.
    async fn resolve_current(
        &self,
        room: &mut Loaded,
        known: Option<(u64, StateMap)>,
        batch: &mut Batch,
    ) -> Result<Vec<Change>> {
        let mut snapshots: Vec<u64> = room.heads.iter().map(|head| head.state_after).collect();
        snapshots.sort_unstable();
        snapshots.dedup();
        let (snapshot, chain, map) = match snapshots.as_slice() {
            [one] if *one == room.snapshot => return Ok(Vec::new()),
            [one] => {
                let map = match known {
                    Some((id, map)) if id == *one => map,
                    _ => state::load(&self.storage, *one)?,
                };
                (*one, state::chain_length(&self.storage, *one)?, map)
            }
            _ => {
                let resolved = state_res::resolve_blocking(
                    self.storage.clone(),
                    room.rules.clone(),
                    snapshots,
                )
                .await?;
                resolved.store_auth_chains(batch);
                if resolved.state == room.state {
                    return Ok(Vec::new());
                }
                let (id, chain) = state::write_diff(
                    &self.storage,
                    batch,
                    self.current_parent(room),
                    &room.state,
                    &resolved.state,
                );
                (id, chain, resolved.state)
            }
        };
        let changed = state::changes(&room.state, &map);
        for (key, old, new) in &changed {
            if let Some(old) = old {
                room.event_ids.remove(old);
            }
            match new {
                Some(event) => {
                    let event_id = rooms::event_id(&self.storage, *event)?
                        .ok_or_else(|| Error::internal(format!("state event {event} has no id")))?;
                    room.event_ids.insert(*event, event_id);
                    if !room.keys.values().any(|known| known == key) {
                        let pair = state::resolve_key(&self.storage, *key)?.ok_or_else(|| {
                            Error::internal(format!("state key {key} cannot be resolved"))
                        })?;
                        room.keys.insert(pair, *key);
                    }
                }
                None => room.keys.retain(|_, known| known != key),
            }
        }
        room.state = map;
        room.snapshot = snapshot;
        room.chain = chain;
        Ok(changed)
    }

    /// The current snapshot as the parent of a delta, `None` before the room's first state.
    fn current_parent(&self, room: &Loaded) -> Option<(u64, u32)> {
        (room.snapshot != state::EMPTY).then_some((room.snapshot, room.chain))
    }

    /// The membership rows a change of the current state writes: one per member key whose
    /// event changed. `pdu` is the event being accepted (`short`), the others are read. A
    /// member key a resolution dropped leaves its user out of the room (a leave naming the
    /// event that was dropped, the last one the room knew for them).
    pub(super) fn membership_changes(
        &self,
        room: &Loaded,
        changed: &[Change],
        pdu: &Pdu,
        short: u64,
    ) -> Result<Vec<(OwnedUserId, MembershipRecord)>> {
        let mut records = Vec::new();
        for (_, old, new) in changed {
            let (Some(event), dropped) = (new.or(*old), new.is_none()) else { continue };
            let stored;
            let member: &Pdu = if event == short {
                pdu
            } else {
                stored = rooms::shared_pdu(&self.storage, event)?
                    .ok_or_else(|| Error::internal(format!("state event {event} is not stored")))?;
                &stored
            };
            if member.kind != ruma::events::TimelineEventType::RoomMember {
                continue;
            }
            let Some(user) = member.state_key.as_deref().and_then(|key| UserId::parse(key).ok())
            else {
                continue;
            };
            let membership = if dropped {
                MembershipState::Leave
            } else {
                MembershipState::from(member.content_str("membership").unwrap_or_default().as_str())
            };
            let stripped_state =
                if matches!(membership, MembershipState::Invite | MembershipState::Knock) {
                    self.stripped_state(room)?
                } else {
                    Vec::new()
                };
            records.push((
                user,
                MembershipRecord {
                    membership,
                    position: 0,
                    event_id: member.event_id.clone(),
                    stripped_state,
                    forgotten: false,
                },
            ));
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> OwnedEventId {
        EventId::parse(format!("${name}:example.org")).expect("event id")
    }

    fn head(name: &str, short: u64, depth: u64) -> Head {
        Head { event_id: id(name), short, state_after: short * 10, depth }
    }

    #[test]
    fn the_prevs_of_a_local_event_are_the_heads_in_any_order() {
        let heads = [head("a", 1, 3), head("b", 2, 3)];
        assert!(prevs_are_heads(&heads, &[id("b"), id("a")]));
        assert!(!prevs_are_heads(&heads, &[id("a")]));
        assert!(!prevs_are_heads(&heads, &[id("a"), id("b"), id("c")]));
        assert!(!prevs_are_heads(&heads, &[id("a"), id("a")]));
        assert!(prevs_are_heads(&[], &[]));
        assert!(!prevs_are_heads(&[], &[id("a")]));
    }

    /// A fork: `a` is the head, `b` and `c` both build on it, `d` merges them.
    #[test]
    fn a_fork_makes_two_heads_and_a_merge_one() {
        let mut heads = vec![head("a", 1, 1)];
        advance_heads(&mut heads, &[id("a")], head("b", 2, 2));
        assert_eq!(heads, [head("b", 2, 2)]);
        // `c` also builds on `a`, which is no longer a head: `b` stays one.
        advance_heads(&mut heads, &[id("a")], head("c", 3, 2));
        assert_eq!(heads, [head("b", 2, 2), head("c", 3, 2)]);
        advance_heads(&mut heads, &[id("b"), id("c")], head("d", 4, 3));
        assert_eq!(heads, [head("d", 4, 3)]);
        // An event accepted twice stays one head.
        advance_heads(&mut heads, &[], head("d", 4, 3));
        assert_eq!(heads, [head("d", 4, 3)]);
    }

    #[test]
    fn a_local_event_refers_to_the_deepest_heads_when_there_are_too_many() {
        let heads: Vec<Head> = (1..=25).map(|n| head(&format!("e{n:02}"), n, n)).collect();
        let prevs = prev_events_for(&heads, 20);
        assert_eq!(prevs.len(), 20);
        assert!(prevs.contains(&id("e25")) && prevs.contains(&id("e06")));
        assert!(!prevs.contains(&id("e05")));
        assert_eq!(prev_events_for(&heads[..3], 20), [id("e01"), id("e02"), id("e03")]);
    }
}
