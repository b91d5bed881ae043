//! Accepting and committing events: creating a room, sending an event, applying a
//! redaction, the rows each event writes, and what follows a commit.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use ruma::events::room::member::MembershipState;
use ruma::{
    EventId, OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomVersionId, ServerName,
    UserId, events::TimelineEventType,
};

use super::{Loaded, RoomActor, RoomState, SendRequest, Sent, resolve::Before};
use crate::{
    Error, Result,
    push::{
        counts as push_counts,
        evaluate::{Outcome, write_notifications},
    },
    rooms::{
        self, Pdu,
        builder::Template,
        commits::{CommittedEvent, RoomCommit},
        pdu::state_key_bytes,
        relations::relation_of,
        search::search_words,
    },
    storage::{
        Batch, Namespace,
        codec::Json,
        push::UnreadCounts,
        rooms::{
            EVENT_META_TABLE, EVENT_TIMES_TABLE, EventMeta, EventStatus, MembershipRecord,
            PDUS_TABLE, RELATIONS_TABLE, ROOM_HEADS_TABLE, ROOM_MEMBERS_TABLE, ROOMS_TABLE,
            RoomHeads, RoomRecord, SEARCH_TABLE, THREADS_TABLE, TIMELINE_TABLE, TRANSACTIONS_TABLE,
            UNREDACTED_TABLE, USER_ROOMS_TABLE, UnredactedRecord,
        },
    },
};

/// State events kept parsed in memory per room.
const STATE_CACHE: usize = 64;

/// An event accepted but not yet committed, with the rows that need its stream position.
pub(super) struct Prepared {
    pub(super) pdu: Arc<Pdu>,
    pub(super) short: u64,
    meta_before: u64,
    meta_after: u64,
    /// The membership rows of the users whose member event in the current state changed.
    membership: Vec<(OwnedUserId, MembershipRecord)>,
    relation: Option<(u64, String)>,
    thread_root_previous: Option<u64>,
    words: Vec<String>,
    transaction: Option<(String, String, String)>,
    /// Another server's event this server relays to the room's other servers but its origin.
    pub(super) relay_except: Option<OwnedServerName>,
    /// Not for the outbox: another server sends it to the room (a join through a resident).
    pub(super) unsent: bool,
}

impl Prepared {
    /// Marks another server's event (from `origin`) as one this server relays.
    pub(super) fn relayed_for(mut self, origin: &ServerName) -> Self {
        self.relay_except = Some(origin.to_owned());
        self
    }

    /// Marks an event this server does not send to the room's other servers itself.
    pub(super) fn not_sent(mut self) -> Self {
        self.unsent = true;
        self
    }
}

/// What a commit leaves for after the reply: the commit listeners' work.
pub(super) struct Committed {
    /// The committed events, in order.
    events: Vec<CommittedEvent>,
    /// Users whose membership changed.
    members: Vec<OwnedUserId>,
    /// Local users the events notified (their pushers have work).
    notified: Vec<OwnedUserId>,
}

impl RoomActor {
    pub(super) async fn create(
        &self,
        room_id: &OwnedRoomId,
        state: &mut RoomState,
        create: Pdu,
        version: RoomVersionId,
        then: Vec<Template>,
    ) -> Result<(Vec<Sent>, Committed)> {
        if state.room.is_some() || rooms::room(&self.storage, room_id)?.is_some() {
            return Err(Error::matrix(
                axum::http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::RoomInUse,
                "A room with this id already exists.",
            ));
        }
        let rules = version.rules().ok_or_else(|| Error::internal("unsupported room version"))?;
        let short = self
            .storage
            .interner()
            .intern(&self.storage, Namespace::RoomId, room_id.as_bytes())
            .await?;
        let mut batch = Batch::new();
        ROOMS_TABLE.put(
            &mut batch,
            &room_id.to_string(),
            &Json(RoomRecord {
                short,
                version: version.clone(),
                creator: create.sender.clone(),
                created_ms: self.time.now_ms(),
            }),
        );
        let mut room = Loaded::empty(room_id.clone(), short, rules);
        let mut prepared = Vec::with_capacity(then.len() + 1);
        let mut pending: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
        let create = Arc::new(create);
        self.authorize(&room, &create, &pending)?;
        prepared.push(self.accept(&mut room, Arc::clone(&create), None, &mut batch).await?);
        pending.insert(create.event_id.clone(), create);
        for template in then {
            let pdu = Arc::new(self.build(&room, template)?);
            self.authorize(&room, &pdu, &pending)?;
            prepared.push(self.accept(&mut room, Arc::clone(&pdu), None, &mut batch).await?);
            pending.insert(pdu.event_id.clone(), pdu);
        }
        let committed = self.commit(&room, prepared, batch).await?;
        state.room = Some(room);
        Ok(committed)
    }

    pub(super) async fn send(
        &self,
        room: &mut Loaded,
        request: SendRequest,
    ) -> Result<(Sent, Option<Committed>)> {
        let SendRequest { template, transaction } = request;
        if let Some(transaction) = &transaction {
            let key = (
                template.sender.to_string(),
                transaction.device.clone(),
                room.room_id.to_string(),
                transaction.txn_id.clone(),
            );
            if let Some(event_id) = TRANSACTIONS_TABLE.get(self.storage.engine(), &key)? {
                let event_id = EventId::parse(event_id)
                    .map_err(|_| Error::internal("stored transaction event id"))?;
                let position = match rooms::event_short(&self.storage, &event_id)? {
                    Some(short) => rooms::any_event_meta(self.storage.engine(), short)?
                        .map_or(0, |meta| meta.position),
                    None => 0,
                };
                return Ok((Sent { event_id, position }, None));
            }
        }
        let template = self.complete_membership(room, template)?;
        let redaction_target = match (&template.kind, &template.redacts) {
            (TimelineEventType::RoomRedaction, Some(target)) => {
                self.check_redaction(room, &template.sender, target)?
            }
            _ => None,
        };
        let pdu = Arc::new(self.build(room, template)?);
        self.authorize(room, &pdu, &HashMap::new())?;
        let mut batch = Batch::new();
        let transaction = transaction
            .map(|transaction| (pdu.sender.to_string(), transaction.device, transaction.txn_id));
        let prepared = self.accept(room, Arc::clone(&pdu), transaction, &mut batch).await?;
        let mut rewritten = Vec::new();
        if let Some((target_short, target)) = redaction_target {
            self.apply_redaction(room, target_short, &target, &pdu, &mut batch)?;
            // A redacted current state event is read from storage from now on: auth checks
            // and push rules must see what the redaction left of it.
            room.cache.remove(&target_short);
            rewritten.push(target_short);
        }
        // Readers of the redacted event go to storage until the commit is done.
        let _rewriting = self.storage.events().rewriting(rewritten);
        let (mut sent, committed) = self.commit(room, vec![prepared], batch).await?;
        let sent = sent.pop().ok_or_else(|| Error::internal("commit returned no event"))?;
        Ok((sent, Some(committed)))
    }

    /// Replaces the stored target with its redacted form (keeping the original if configured).
    pub(super) fn apply_redaction(
        &self,
        room: &Loaded,
        short: u64,
        target: &Pdu,
        redaction: &Pdu,
        batch: &mut Batch,
    ) -> Result<()> {
        let redacted = target.redacted(&room.rules, redaction)?;
        if target.kind == TimelineEventType::RoomMember
            && let Some(user) = target.state_key.as_deref().and_then(|key| UserId::parse(key).ok())
        {
            room.display_names
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&user);
        }
        if self.save_unredacted {
            let original = target.stored_text().to_owned();
            UNREDACTED_TABLE.put(
                batch,
                &short,
                &Json(UnredactedRecord { original, redacted_ms: self.time.now_ms() }),
            );
        }
        PDUS_TABLE.put(batch, &short, &redacted.to_bytes());
        if let Some(mut meta) = rooms::any_event_meta(self.storage.engine(), short)? {
            meta.redacted = true;
            // `accept` already marked the target in this batch if the redaction relates to
            // it; this later write of the same row must keep that mark.
            if relation_of(redaction).is_some_and(|(parent, _)| parent == target.event_id) {
                meta.has_children = Some(true);
            }
            let position = meta.position;
            EVENT_META_TABLE.put(batch, &short, &Json(meta));
            for word in search_words(target) {
                SEARCH_TABLE.delete(batch, &(room.short, word, position));
            }
        }
        Ok(())
    }

    /// Accepts a checked event: allocates its ids, advances the in-memory state and adds
    /// the rows that do not need its stream position to `batch`.
    pub(super) async fn accept(
        &self,
        room: &mut Loaded,
        pdu: Arc<Pdu>,
        transaction: Option<(String, String, String)>,
        batch: &mut Batch,
    ) -> Result<Prepared> {
        let before = self.state_before(room, &pdu.prev_events).await?;
        self.accept_with(room, pdu, transaction, None, before, batch).await
    }

    /// [`Self::accept`] on a known state before, reusing the short id of an event stored
    /// already (an outlier being placed).
    pub(super) async fn accept_with(
        &self,
        room: &mut Loaded,
        pdu: Arc<Pdu>,
        transaction: Option<(String, String, String)>,
        known: Option<u64>,
        before: Before,
        batch: &mut Batch,
    ) -> Result<Prepared> {
        let interner = self.storage.interner();
        let short = known.unwrap_or_else(|| interner.allocate());
        let key = match &pdu.state_key {
            Some(state_key) => {
                let kind = pdu.kind.to_string();
                let key = interner
                    .intern(&self.storage, Namespace::StateKey, &state_key_bytes(&kind, state_key))
                    .await?;
                room.keys.insert((kind, state_key.clone()), key);
                if room.cache.len() >= STATE_CACHE {
                    room.cache.clear();
                }
                room.cache.insert(short, Arc::clone(&pdu));
                Some(key)
            }
            None => None,
        };
        let placed =
            self.place(room, &pdu, short, key, EventStatus::Timeline, before, batch).await?;
        let membership = self.membership_changes(room, &placed.changed, &pdu, short)?;
        {
            let names =
                room.display_names.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (user, _) in &membership {
                names.remove(user);
            }
        }
        room.depth = room.depth.max(pdu.depth);

        let relation = match relation_of(&pdu) {
            Some((parent, rel_type)) => {
                rooms::event_short(&self.storage, &parent)?.map(|parent| (parent, rel_type))
            }
            None => None,
        };
        // The parent now has a child. (A parent in this same commit has no meta stored yet;
        // `commit` marks it.)
        if let Some((parent, _)) = &relation
            && let Some(mut meta) = rooms::any_event_meta(self.storage.engine(), *parent)?
            && meta.has_children != Some(true)
        {
            meta.has_children = Some(true);
            EVENT_META_TABLE.put(batch, parent, &Json(meta));
        }
        let thread_root_previous = match &relation {
            Some((root, rel_type)) if rel_type == "m.thread" => {
                let mut previous = None;
                RELATIONS_TABLE.scan_keys(
                    self.storage.engine(),
                    &crate::storage::codec::prefix2(root, &"m.thread"),
                    None,
                    crate::storage::Direction::Reverse,
                    |(_, _, position)| {
                        previous = Some(position);
                        std::ops::ControlFlow::Break(())
                    },
                )?;
                // The root's own position stands for a thread without replies yet.
                Some(match previous {
                    Some(previous) => previous,
                    None => rooms::event_meta(self.storage.engine(), *root)?
                        .map_or(0, |meta| meta.position),
                })
            }
            _ => None,
        };
        Ok(Prepared {
            words: search_words(&pdu),
            pdu,
            short,
            meta_before: placed.state_before,
            meta_after: placed.state_after,
            membership,
            relation,
            thread_root_previous,
            transaction,
            relay_except: None,
            unsent: false,
        })
    }

    /// Commits prepared events in order with consecutive stream positions, with what their
    /// push rules record (notifications and unread counts) in the same commit.
    pub(super) async fn commit(
        &self,
        room: &Loaded,
        prepared: Vec<Prepared>,
        mut batch: Batch,
    ) -> Result<(Vec<Sent>, Committed)> {
        ROOM_HEADS_TABLE.put(
            &mut batch,
            &room.short,
            &Json(RoomHeads {
                snapshot: room.snapshot,
                snapshot_chain: room.chain,
                extremities: room.heads.iter().map(|head| head.event_id.clone()).collect(),
                depth: room.depth,
                backfill_seq: room.backfill_seq,
            }),
        );
        let room_short = room.short;
        let room_id = room.room_id.to_string();
        let count = prepared.len() as u64;
        let members: Vec<OwnedUserId> = prepared
            .iter()
            .flat_map(|prepared| prepared.membership.iter().map(|(user, _)| user.clone()))
            .collect();
        let membership_changes: Vec<(OwnedUserId, MembershipState)> = prepared
            .iter()
            .flat_map(|prepared| prepared.membership.iter())
            .map(|(user, record)| (user.clone(), record.membership.clone()))
            .collect();
        let ids: Vec<OwnedEventId> =
            prepared.iter().map(|prepared| prepared.pdu.event_id.clone()).collect();
        let events: Vec<(Arc<Pdu>, u64, Option<String>)> = prepared
            .iter()
            .map(|prepared| {
                let thread = relation_of(&prepared.pdu)
                    .filter(|(_, rel_type)| rel_type == "m.thread")
                    .map(|(root, _)| root.to_string());
                (Arc::clone(&prepared.pdu), prepared.short, thread)
            })
            .collect();
        // A failed evaluation costs the events their notifications, never their commit.
        let push = match self.evaluate_push(room, &events, &membership_changes).await {
            Ok(push) => push,
            Err(error) => {
                tracing::warn!(room = %room.room_id, %error, "push rule evaluation failed");
                Outcome::default()
            }
        };
        let Outcome { batch: push_batch, notifications, counts, notified } = push;
        batch.append(push_batch);
        // Every member's counts change with each message: the cache takes the new values
        // rather than having each member's next /sync read them back.
        let mut changed_by_user: HashMap<OwnedUserId, BTreeMap<String, UnreadCounts>> =
            HashMap::new();
        for ((user, thread), counts) in &counts {
            changed_by_user.entry(user.clone()).or_default().insert(thread.clone(), counts.clone());
        }
        let counts_writing = self
            .storage
            .coherent()
            .unread_counts
            .begin(changed_by_user.keys().map(|user| (user.clone(), room_short)).collect());
        let _memberships_writing = self.storage.coherent().memberships.begin(members.clone());
        // Handed to the other servers when one is in the room, before or after these events
        // (a membership of another server's user changes who that is). Read before the
        // members list is dropped below: read after, it would be cached from before the commit.
        let federated = self.outbox.enabled()
            && (self.has_remote_members(room)?
                || members.iter().any(|member| member.server_name() != self.server_name));
        let outbox = self.outbox.clone();
        let outgoing: Vec<_> = if federated {
            prepared.iter().map(|prepared| self.outbox_item(prepared)).collect()
        } else {
            Vec::new()
        };
        // Dropped before the commit, so even a commit whose outcome is unknown (the Writer
        // stopping) cannot leave a stale list behind.
        if !membership_changes.is_empty() {
            *room.joined.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
        let parents: HashSet<u64> = prepared
            .iter()
            .filter_map(|prepared| prepared.relation.as_ref())
            .map(|(parent, _)| *parent)
            .collect();
        let (activity, activity_writing) = rooms::activity::begin(
            &self.storage,
            room_short,
            prepared.iter().map(|prepared| &prepared.pdu.kind),
            room.bump.load(std::sync::atomic::Ordering::Relaxed),
        );
        let positions = self
            .storage
            .writer()
            .commit_with_positions(count, batch, move |batch, positions| {
                let assigned: Vec<u64> = positions.clone().collect();
                activity.write(batch, &positions);
                for (index, (prepared, position)) in
                    prepared.into_iter().zip(positions.clone()).enumerate()
                {
                    let has_children = parents.contains(&prepared.short);
                    if let Some(Some(item)) = outgoing.get(index) {
                        outbox.put(batch, position, item);
                    }
                    write_positioned(batch, room_short, &room_id, prepared, position, has_children);
                }
                write_notifications(batch, room_short, notifications, &assigned);
                // Counts are stamped with the last event's position: a sync that sees the
                // events sees their counts.
                let stamp = positions.end.saturating_sub(1);
                for ((user, thread), counts) in counts {
                    let changed = std::iter::once((thread, counts)).collect();
                    push_counts::write_counts(batch, &user, room_short, changed, stamp);
                }
            })
            .await?;
        let activity = activity_writing.committed(&positions);
        room.bump.store(activity.bump, std::sync::atomic::Ordering::Relaxed);
        let stamp = positions.end.saturating_sub(1);
        counts_writing.committed(|(user, _), before| match changed_by_user.get(user) {
            Some(changed) => push_counts::with_written(before, changed, stamp),
            None => before.clone(),
        });
        let events = events
            .into_iter()
            .zip(positions.clone())
            .map(|((pdu, _, _), position)| CommittedEvent { pdu, position })
            .collect();
        let committed = Committed { events, members, notified };
        let sent = ids
            .into_iter()
            .zip(positions)
            .map(|(event_id, position)| Sent { event_id, position })
            .collect();
        Ok((sent, committed))
    }

    /// After a commit (and the reply to the sender): hands it to the commit listeners (the
    /// SyncHub, the pushers, the admin room's command hook).
    pub(super) async fn after_commit(&self, room: &Loaded, committed: Committed) {
        let Committed { events, members, notified } = committed;
        let commit = RoomCommit { room_id: room.room_id.clone(), events, members, notified };
        self.listeners.notify(&commit).await;
    }
}

/// The rows of an event that carry its stream position.
fn write_positioned(
    batch: &mut Batch,
    room: u64,
    room_id: &str,
    prepared: Prepared,
    position: u64,
    has_children: bool,
) {
    let Prepared {
        pdu,
        short,
        meta_before,
        meta_after,
        membership,
        relation,
        thread_root_previous,
        words,
        transaction,
        relay_except: _,
        unsent: _,
    } = prepared;
    let sent_by = transaction.as_ref().map(|(_, device, txn)| (device.clone(), txn.clone()));
    EVENT_META_TABLE.put(
        batch,
        &short,
        &Json(EventMeta {
            room,
            position,
            state_before: meta_before,
            state_after: meta_after,
            redacted: false,
            transaction: sent_by,
            has_children: Some(has_children),
            status: EventStatus::Timeline,
            backfill: None,
        }),
    );
    TIMELINE_TABLE.put(batch, &(room, position), &short);
    EVENT_TIMES_TABLE.put(batch, &(room, u64::from(pdu.origin_server_ts.get()), position), &short);
    for (user, mut record) in membership {
        record.position = position;
        ROOM_MEMBERS_TABLE.put(batch, &(room, user.to_string()), &Json(record.clone()));
        USER_ROOMS_TABLE.put(batch, &(user.to_string(), room_id.to_owned()), &Json(record));
    }
    if let Some((parent, rel_type)) = relation {
        if rel_type == "m.thread" {
            if let Some(previous) = thread_root_previous {
                THREADS_TABLE.delete(batch, &(room, previous));
            }
            THREADS_TABLE.put(batch, &(room, position), &parent);
        }
        RELATIONS_TABLE.put(batch, &(parent, rel_type, position), &short);
    }
    for word in words {
        SEARCH_TABLE.put(batch, &(room, word, position), &short);
    }
    if let Some((user, device, txn)) = transaction {
        TRANSACTIONS_TABLE.put(
            batch,
            &(user, device, room_id.to_owned(), txn),
            &pdu.event_id.to_string(),
        );
    }
}
