//! The PDUs of other servers' transactions, handed to their rooms' actors.
//!
//! - A PDU's id is computed as its room's version defines it (the `event_id` field in
//!   versions 1 and 2, the reference hash from version 3 on). A PDU of a room this server
//!   does not know is answered with an error and nothing of it is stored.
//! - The PDUs are grouped by room. A room disabled for federation, or whose server ACL (as
//!   it is now) denies the sending server or the event's sender's server, answers each of
//!   its PDUs with an error, and nothing of them is stored.
//! - The checks that need no room state (format, signatures, hashes:
//!   [`verify_batch`]) run per room, the signatures on the blocking pool; a PDU that fails
//!   them is answered with the reason.
//! - Rooms are handled in parallel (at most [`ROOMS_AT_ONCE`]), each room's PDUs one after
//!   the other in the transaction's order, each checked and stored by its room's actor
//!   (`RoomMessage::Ingest`). A rejected or dropped PDU is answered with the reason.
//! - The sender waits at most `federation_transaction_deadline_ms`: the PDUs not done by
//!   then are staged (`inbound_pdus`) and answered `{}`. Their processing goes on after the
//!   answer, and each staged row is deleted once its PDU is done; rows a stop left behind
//!   are processed at the next start ([`Intake::replay_staged`]). Processing a PDU twice
//!   stores it once (the second time it is known), so a replay is always safe.

use std::{
    collections::{BTreeMap, HashMap},
    ops::ControlFlow,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures_util::{StreamExt, stream};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId,
    RoomVersionId, ServerName, UserId,
};
use serde_json::value::RawValue as RawJsonValue;
use tokio::sync::Mutex;

use super::{Answer, Intake};
use crate::{
    Result,
    actors::tasks,
    federation::{
        acl, disabled_rooms,
        events::{self, Refusal, verify_batch},
    },
    rooms::{
        self, Pdu,
        actor::{Arrival, Ingested, RoomMessage},
    },
    storage::{
        Batch, Direction, Storage,
        codec::Json,
        dag::{INBOUND_PDUS_TABLE, InboundPdu},
        rooms::RoomRecord,
    },
};

/// Rooms whose PDUs are processed at once (Synapse's limit too).
const ROOMS_AT_ONCE: usize = 10;
/// How long one PDU may wait for its room's actor.
const INGEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Staged rows replayed together at startup.
const REPLAY_ROUND: usize = 50;

/// One PDU on its way to its room's actor.
struct Item {
    /// Its place in the transaction (or among the replayed rows).
    index: usize,
    event_id: OwnedEventId,
    origin: OwnedServerName,
    /// The server of its `sender`, when it has a readable one (the format check refuses it
    /// otherwise).
    sender_server: Option<OwnedServerName>,
    raw: Box<RawJsonValue>,
}

/// The PDUs of one room, in the order they arrived.
struct RoomItems {
    room_id: OwnedRoomId,
    record: RoomRecord,
    items: Vec<Item>,
}

/// What the edge makes of one PDU before its room's checks.
enum Read {
    /// Not an event with an id to answer by: left out of the answer.
    Unreadable,
    /// Refused at once, with the reason.
    Refused(OwnedEventId, String),
    /// An event of a room this server knows.
    Known {
        room_id: OwnedRoomId,
        record: RoomRecord,
        event_id: OwnedEventId,
        sender_server: Option<OwnedServerName>,
    },
}

/// What is known of a batch of PDUs while they are processed. Its lock orders staging
/// against finishing: a PDU done after its row was written deletes the row.
#[derive(Default)]
struct Progress {
    /// Each PDU's result once it has one (`Err`: the reason it was refused).
    done: HashMap<usize, Result<(), String>>,
    /// The `inbound_pdus` rows of staged PDUs not done yet.
    staged: HashMap<usize, (u64, u64)>,
}

type Shared = Arc<Mutex<Progress>>;

impl Intake {
    /// Processes a transaction's PDUs and answers each by its event id: `None` when it was
    /// taken (or staged at the deadline), else the reason it was refused.
    pub(super) async fn apply_pdus(
        self: &Arc<Self>,
        origin: &ServerName,
        pdus: &[Box<RawJsonValue>],
    ) -> Result<Answer> {
        let mut answer = Answer::new();
        let mut by_room: BTreeMap<OwnedRoomId, RoomItems> = BTreeMap::new();
        let mut answered = Vec::new();
        let mut texts = Vec::new();
        for (index, raw) in pdus.iter().enumerate() {
            match read_pdu(&self.storage, raw.get())? {
                Read::Unreadable => {}
                Read::Refused(event_id, reason) => {
                    answer.insert(event_id.to_string(), Some(reason));
                }
                Read::Known { room_id, record, event_id, sender_server } => {
                    answered.push((index, event_id.clone()));
                    texts.push((index, record.short, raw.get().to_owned()));
                    let room = by_room.entry(room_id.clone()).or_insert_with(|| RoomItems {
                        room_id,
                        record,
                        items: Vec::new(),
                    });
                    room.items.push(Item {
                        index,
                        event_id,
                        origin: origin.to_owned(),
                        sender_server,
                        raw: raw.clone(),
                    });
                }
            }
        }
        if by_room.is_empty() {
            return Ok(answer);
        }

        let shared = Shared::default();
        let intake = Arc::clone(self);
        let progress = Arc::clone(&shared);
        let mut processing = tasks::spawn("federation_transaction", async move {
            intake.process(by_room.into_values().collect(), &progress).await;
        });
        let finished =
            tokio::time::timeout(self.settings.pdu_deadline, &mut processing).await.is_ok();
        let mut progress = shared.lock().await;
        if !finished {
            self.stage(origin, &mut progress, texts).await?;
            metrics::counter!("tuwunel_federation_pdus_staged_total")
                .increment(progress.staged.len() as u64);
        }
        for (index, event_id) in answered {
            let error = match progress.done.get(&index) {
                Some(result) => result.clone().err(),
                None if progress.staged.contains_key(&index) => None,
                // The processing ended without a result for it (a panic, logged).
                None => Some("The event could not be processed.".to_owned()),
            };
            answer.insert(event_id.to_string(), error);
        }
        Ok(answer)
    }

    /// Processes the PDUs that transactions acknowledged before they were done and a stop
    /// left behind (`inbound_pdus`), oldest first; returns how many there were.
    pub async fn replay_staged(self: &Arc<Self>) -> Result<usize> {
        let mut keys = Vec::new();
        INBOUND_PDUS_TABLE.scan_keys(
            self.storage.engine(),
            b"",
            None,
            Direction::Forward,
            |key| {
                keys.push(key);
                ControlFlow::Continue(())
            },
        )?;
        // Arrival ids grow with time: in arrival order within each room.
        keys.sort_by_key(|&(room, arrival)| (arrival, room));
        for round in keys.chunks(REPLAY_ROUND) {
            let mut by_room: BTreeMap<OwnedRoomId, RoomItems> = BTreeMap::new();
            let mut progress = Progress::default();
            let mut unreadable = Batch::new();
            for (index, key) in round.iter().enumerate() {
                let row = INBOUND_PDUS_TABLE.get(self.storage.engine(), key).ok().flatten();
                let read = match &row {
                    Some(Json(row)) => {
                        let origin = ServerName::parse(&row.origin).ok();
                        let raw = RawJsonValue::from_string(row.pdu.clone()).ok();
                        match (origin, raw) {
                            (Some(origin), Some(raw)) => {
                                Some((origin, read_pdu(&self.storage, raw.get())?, raw))
                            }
                            _ => None,
                        }
                    }
                    None => None,
                };
                let Some((origin, Read::Known { room_id, record, event_id, sender_server }, raw)) =
                    read
                else {
                    INBOUND_PDUS_TABLE.delete(&mut unreadable, key);
                    continue;
                };
                progress.staged.insert(index, *key);
                by_room
                    .entry(room_id.clone())
                    .or_insert_with(|| RoomItems { room_id, record, items: Vec::new() })
                    .items
                    .push(Item { index, event_id, origin, sender_server, raw });
            }
            self.storage.writer().commit(unreadable).await?;
            let shared = Arc::new(Mutex::new(progress));
            Arc::clone(self).process(by_room.into_values().collect(), &shared).await;
        }
        if !keys.is_empty() {
            tracing::info!(count = keys.len(), "processed events staged before the last stop");
        }
        Ok(keys.len())
    }

    /// Processes the PDUs of several rooms, rooms in parallel.
    async fn process(self: Arc<Self>, rooms: Vec<RoomItems>, progress: &Shared) {
        stream::iter(rooms)
            .for_each_concurrent(ROOMS_AT_ONCE, |room| self.process_room(room, progress))
            .await;
    }

    /// Processes one room's PDUs in order: the room's gates, the signatures, the actor.
    async fn process_room(&self, room: RoomItems, progress: &Shared) {
        let RoomItems { room_id, record, items } = room;
        let mut passed = Vec::with_capacity(items.len());
        for item in items {
            match self.room_gate(&room_id, &record, &item) {
                Ok(None) => passed.push(item),
                Ok(Some(reason)) => self.finish(progress, item.index, Err(reason), true).await,
                Err(error) => {
                    self.finish(progress, item.index, Err(error.to_string()), false).await;
                }
            }
        }
        if passed.is_empty() {
            return;
        }
        let raws = passed.iter().map(|item| item.raw.clone()).collect();
        let verified = verify_batch(&self.keys, &record.version, raws).await;
        for (item, verified) in passed.into_iter().zip(verified) {
            let (result, settled) = match verified {
                Ok(verified) if verified.pdu.event_id != item.event_id => {
                    (Err("The event's id does not match its content.".to_owned()), true)
                }
                Ok(verified) => self.ingest(&room_id, verified.pdu, item.origin).await,
                // Keys that could not be had now may be had later.
                Err(refusal @ (Refusal::Keys(_) | Refusal::Internal(_))) => {
                    (Err(refusal.to_string()), false)
                }
                Err(refusal) => (Err(refusal.to_string()), true),
            };
            if let Err(reason) = &result {
                tracing::debug!(event = %item.event_id, room = %room_id, reason, "refused a PDU");
            }
            self.finish(progress, item.index, result, settled).await;
        }
    }

    /// Why `item` may not enter `room` at all: the room is disabled for federation, or its
    /// server ACL denies the sending server or the sender's server.
    fn room_gate(
        &self,
        room_id: &RoomId,
        record: &RoomRecord,
        item: &Item,
    ) -> Result<Option<String>> {
        if disabled_rooms::is_disabled(&self.storage, room_id)? {
            return Ok(Some("This server does not federate this room.".to_owned()));
        }
        let Some(heads) = rooms::heads(self.storage.engine(), record.short)? else {
            return Ok(Some(not_in_room(room_id.as_str())));
        };
        for server in std::iter::once(&item.origin).chain(item.sender_server.as_ref()) {
            if !acl::room_allows(&self.storage, heads.snapshot, server)? {
                return Ok(Some(format!("Server {server} is denied by the room's server ACL.")));
            }
        }
        Ok(None)
    }

    /// Has the room's actor check and store `pdu`: `Err` with the reason when it is not
    /// taken (rejected by the auth rules, dropped, or the actor could not be had), and
    /// whether that is settled (the actor's verdict) or could change on a later try.
    async fn ingest(
        &self,
        room_id: &RoomId,
        pdu: Pdu,
        origin: OwnedServerName,
    ) -> (Result<(), String>, bool) {
        let pdu = Box::new(pdu);
        let outcome = self
            .rooms
            .call(
                &room_id.to_owned(),
                |reply| RoomMessage::Ingest { pdu, origin, arrival: Arrival::Pushed, reply },
                INGEST_TIMEOUT,
            )
            .await
            .and_then(|ingested| ingested);
        match outcome {
            Ok(Ingested::Accepted | Ingested::Known | Ingested::SoftFailed) => (Ok(()), true),
            Ok(Ingested::Rejected(reason)) => {
                (Err(format!("The event was rejected: {reason}")), true)
            }
            Ok(Ingested::Dropped(reason)) => (Err(reason), true),
            // A full mailbox, a stopping server, a failed commit.
            Err(error) => (Err(error.to_string()), false),
        }
    }

    /// Records a PDU's result; deletes its staged row if it has one and the result is
    /// `settled` (a row kept is tried again at the next start).
    async fn finish(
        &self,
        progress: &Shared,
        index: usize,
        result: Result<(), String>,
        settled: bool,
    ) {
        let mut progress = progress.lock().await;
        if let Some(key) = progress.staged.remove(&index)
            && settled
        {
            let mut batch = Batch::new();
            INBOUND_PDUS_TABLE.delete(&mut batch, &key);
            // Left behind, the row is replayed at the next start and found known.
            if let Err(error) = self.storage.writer().commit(batch).await {
                tracing::warn!(%error, "deleting a processed staged event failed");
            }
        }
        progress.done.insert(index, result);
    }

    /// Stages the PDUs of `texts` (index, short room, JSON) not done yet.
    async fn stage(
        &self,
        origin: &ServerName,
        progress: &mut Progress,
        texts: Vec<(usize, u64, String)>,
    ) -> Result<()> {
        let received_ms = self.time.now_ms();
        let mut batch = Batch::new();
        for (index, room, pdu) in texts {
            if progress.done.contains_key(&index) {
                continue;
            }
            let key = (room, self.arrival_id());
            let row = InboundPdu { origin: origin.to_string(), pdu, received_ms };
            INBOUND_PDUS_TABLE.put(&mut batch, &key, &Json(row));
            progress.staged.insert(index, key);
        }
        self.storage.writer().commit(batch).await
    }

    /// A new id for a staged PDU: growing with the wall clock (so ids stay unique and in
    /// arrival order across restarts), and within this run with each call.
    fn arrival_id(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX));
        let previous = self
            .last_arrival
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(now.max(last.saturating_add(1)))
            })
            .unwrap_or(now);
        now.max(previous.saturating_add(1))
    }
}

/// What the edge reads of one PDU: its room (known here or not) and its id.
fn read_pdu(storage: &Storage, json: &str) -> Result<Read> {
    let Ok(object) = serde_json::from_str::<CanonicalJsonObject>(json) else {
        return Ok(Read::Unreadable);
    };
    let room_id = match object.get("room_id") {
        Some(CanonicalJsonValue::String(room)) => RoomId::parse(room).ok(),
        _ => None,
    };
    let record = match &room_id {
        Some(room_id) => rooms::room(storage, room_id)?,
        None => None,
    };
    let (Some(room_id), Some(record)) = (room_id, record) else {
        let reason = match object.get("room_id") {
            Some(CanonicalJsonValue::String(room)) => not_in_room(room),
            _ => "The event names no room.".to_owned(),
        };
        return Ok(match unknown_room_event_id(&object) {
            Some(event_id) => Read::Refused(event_id, reason),
            None => Read::Unreadable,
        });
    };
    let Some(rules) = record.version.rules() else {
        return Ok(match unknown_room_event_id(&object) {
            Some(event_id) => Read::Refused(
                event_id,
                format!("This server does not support room version {}.", record.version),
            ),
            None => Read::Unreadable,
        });
    };
    let Ok(event_id) = events::event_id(&object, &rules) else { return Ok(Read::Unreadable) };
    let sender_server = match object.get("sender") {
        Some(CanonicalJsonValue::String(sender)) => {
            UserId::parse(sender).ok().map(|sender| sender.server_name().to_owned())
        }
        _ => None,
    };
    Ok(Read::Known { room_id, record, event_id, sender_server })
}

/// The id to answer an event of an unknown room by: its `event_id` field when it has one
/// (room versions 1 and 2 carry it), else the reference hash as the current room versions
/// compute it.
fn unknown_room_event_id(object: &CanonicalJsonObject) -> Option<OwnedEventId> {
    if let Some(CanonicalJsonValue::String(event_id)) = object.get("event_id") {
        return OwnedEventId::try_from(event_id.as_str()).ok();
    }
    events::event_id(object, &RoomVersionId::V11.rules()?).ok()
}

fn not_in_room(room: &str) -> String {
    format!("This server is not in the room {room}.")
}
