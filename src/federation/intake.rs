//! Transactions from other servers (`PUT /_matrix/federation/v1/send/{txnId}`): checked,
//! applied once, and answered the same way however often they are retried.
//!
//! - A transaction's `origin` must be the server that signed the request; at most 50 PDUs
//!   and 100 EDUs (`400 M_BAD_JSON` otherwise).
//! - A transaction already applied (same origin, same id) is answered from its record and
//!   not applied again; concurrent copies of one transaction share one application.
//! - The application runs in a task of its own, so a sender that gives up on the request
//!   cannot leave it half done.
//! - PDUs go to their rooms' actors ([`pdus`]): each is answered `{}` or with the reason it
//!   was refused, within `federation_transaction_deadline_ms`.
//! - EDUs are applied one by one ([`super::edus`]); one that cannot be read, or of a type
//!   this server does not know, is skipped.

mod pdus;

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, Instant},
};

use dashmap::DashMap;
use ruma::{
    OwnedEventId, OwnedServerName, RoomId, ServerName,
    api::federation::transactions::{edu::Edu, send_transaction_message},
};

use super::{
    acl, client::FederationClient, edus, flight::SingleFlight, keys::ServerKeys, outbox::Outbox,
    sender::Sender,
};
use crate::{
    Config, Error, Result,
    actors::{Registry, tasks},
    limits, rooms,
    rooms::actor::RoomActor,
    storage::{
        Batch, Direction, Storage,
        codec::Json,
        federation::{INBOUND_TRANSACTIONS_TABLE, InboundTransactionRecord},
    },
    sync::hub::SyncHub,
    time::Time,
};

/// How long a transaction's record is kept to answer retries (the hourly housekeeping
/// deletes older ones).
pub const TRANSACTION_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// What the intake reads from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct IntakeSettings {
    pub presence: bool,
    pub typing: bool,
    /// How long another server's typing notice lasts.
    pub typing_timeout: Duration,
    /// How long a sender waits for the PDUs of its transaction at most.
    pub pdu_deadline: Duration,
}

/// The answer to one transaction: each PDU's event id and its error (`None`: accepted).
type Answer = BTreeMap<String, Option<String>>;

/// Applies other servers' transactions.
pub struct Intake {
    pub(super) storage: Arc<Storage>,
    pub(super) hub: Arc<SyncHub>,
    pub(super) rooms: Registry<RoomActor>,
    pub(super) sender: Arc<Sender>,
    /// What records and presence are dated by.
    pub(super) time: Time,
    pub(super) client: Arc<FederationClient>,
    /// Other servers' keys, for the signatures of their events.
    pub(super) keys: Arc<ServerKeys>,
    pub(super) server_name: OwnedServerName,
    pub(super) outbox: Outbox,
    pub(super) settings: IntakeSettings,
    flight: SingleFlight<(OwnedServerName, String), Result<Answer, String>>,
    /// Transactions being applied, and since when (`!admin federation incoming-federation`).
    running: DashMap<(OwnedServerName, String), Instant>,
    /// The last id given to a staged PDU (`inbound_pdus`).
    last_arrival: AtomicU64,
}

impl Intake {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        storage: Arc<Storage>,
        hub: Arc<SyncHub>,
        rooms: Registry<RoomActor>,
        sender: Arc<Sender>,
        client: Arc<FederationClient>,
        keys: Arc<ServerKeys>,
        time: Time,
    ) -> Self {
        Self {
            storage,
            hub,
            rooms,
            sender,
            time,
            client,
            keys,
            server_name: config.server_name.clone(),
            outbox: Outbox::from_config(config),
            settings: IntakeSettings {
                presence: config.allow_incoming_presence,
                typing: config.allow_incoming_typing,
                typing_timeout: Duration::from_secs(config.typing_federation_timeout_s.max(1)),
                pdu_deadline: Duration::from_millis(config.federation_transaction_deadline_ms),
            },
            flight: SingleFlight::default(),
            running: DashMap::new(),
            last_arrival: AtomicU64::new(0),
        }
    }

    /// Transactions being applied now: origin, transaction id, for how long.
    pub fn running(&self) -> Vec<(OwnedServerName, String, Duration)> {
        let mut running: Vec<_> = self
            .running
            .iter()
            .map(|entry| (entry.key().0.clone(), entry.key().1.clone(), entry.value().elapsed()))
            .collect();
        running.sort();
        running
    }

    /// Receives a transaction `origin` signed.
    pub async fn receive(
        self: &Arc<Self>,
        origin: &ServerName,
        request: send_transaction_message::v1::Request,
    ) -> Result<send_transaction_message::v1::Response> {
        if request.origin != origin {
            return Err(Error::forbidden(format!(
                "The transaction claims to come from {}, but {origin} signed it.",
                request.origin
            )));
        }
        if request.pdus.len() > limits::MAX_TRANSACTION_PDUS
            || request.edus.len() > limits::MAX_TRANSACTION_EDUS
        {
            return Err(Error::bad_json(format!(
                "A transaction carries at most {} PDUs and {} EDUs.",
                limits::MAX_TRANSACTION_PDUS,
                limits::MAX_TRANSACTION_EDUS
            )));
        }
        // It sent something: whatever waits for it can go now.
        self.sender.online(origin).await;
        let txn_id = request.transaction_id.to_string();
        let key = (origin.to_owned(), txn_id.clone());
        let record_key = (origin.to_string(), txn_id);
        if let Some(Json(record)) =
            INBOUND_TRANSACTIONS_TABLE.get_readable(self.storage.engine(), &record_key)?
        {
            metrics::counter!("tuwunel_federation_transactions_received_total", "outcome" => "repeat")
                .increment(1);
            return Ok(response(record.pdus));
        }
        let intake = Arc::clone(self);
        let answer = self
            .flight
            .run(&key, || async move {
                // Not cancelled with the request: a transaction is applied whole.
                let applying = tasks::spawn("federation_transaction", async move {
                    intake.apply(record_key, request).await
                });
                match applying.await {
                    Ok(Some(result)) => result.map_err(|error| error.to_string()),
                    // The panic is logged; without a record, a retry applies it again.
                    Ok(None) => Err("applying the transaction failed".to_owned()),
                    Err(error) => Err(format!("applying the transaction failed: {error}")),
                }
            })
            .await
            .map_err(Error::internal)?;
        Ok(response(answer))
    }

    /// Applies a new transaction and records its answer.
    async fn apply(
        self: &Arc<Self>,
        record_key: (String, String),
        request: send_transaction_message::v1::Request,
    ) -> Result<Answer> {
        let storage = &self.storage;
        // A copy that arrived while the flight of the first one was ending.
        if let Some(Json(record)) =
            INBOUND_TRANSACTIONS_TABLE.get_readable(storage.engine(), &record_key)?
        {
            return Ok(record.pdus);
        }
        let origin = request.origin.clone();
        let running_key = (origin.clone(), record_key.1.clone());
        self.running.insert(running_key.clone(), Instant::now());
        let _done = Running { map: &self.running, key: running_key };
        let started = Instant::now();

        let answer = self.apply_pdus(&origin, &request.pdus).await?;
        for edu in &request.edus {
            match edu.deserialize() {
                Ok(edu) => self.apply_edu(&origin, edu).await,
                Err(error) => {
                    tracing::debug!(%origin, %error, "skipping an EDU that cannot be read");
                    metrics::counter!("tuwunel_federation_edus_received_total", "type" => "unreadable")
                        .increment(1);
                }
            }
        }

        let mut batch = Batch::new();
        let record =
            InboundTransactionRecord { received_ms: self.time.now_ms(), pdus: answer.clone() };
        INBOUND_TRANSACTIONS_TABLE.put(&mut batch, &record_key, &Json(record));
        storage.writer().commit(batch).await?;
        metrics::counter!("tuwunel_federation_transactions_received_total", "outcome" => "applied")
            .increment(1);
        metrics::histogram!("tuwunel_federation_transaction_apply_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(answer)
    }

    /// Applies one EDU; what it cannot apply it logs and skips.
    async fn apply_edu(&self, origin: &ServerName, edu: Edu) {
        let (kind, result) = match edu {
            Edu::Typing(content) => {
                ("m.typing", edus::typing::receive(self, origin, content).await)
            }
            Edu::Receipt(content) => {
                ("m.receipt", edus::receipt::receive(self, origin, content).await)
            }
            Edu::Presence(content) => {
                ("m.presence", edus::presence::receive(self, origin, content).await)
            }
            Edu::DeviceListUpdate(content) => {
                ("m.device_list_update", edus::device_list::receive(self, origin, content).await)
            }
            Edu::SigningKeyUpdate(content) => (
                "m.signing_key_update",
                edus::device_list::receive_signing_keys(self, origin, content).await,
            ),
            Edu::DirectToDevice(content) => {
                ("m.direct_to_device", edus::to_device::receive(self, origin, content).await)
            }
            _ => ("unknown", Ok(())),
        };
        metrics::counter!("tuwunel_federation_edus_received_total", "type" => kind).increment(1);
        if let Err(error) = result {
            tracing::debug!(%origin, kind, %error, "an EDU was not applied");
        }
    }

    /// Whether `origin` may send EDUs about `room`: it has a member joined (EDUs about a
    /// room come only from its servers), the room's server ACL lets it in (the spec: room
    /// EDUs of a denied server are ignored), and the room is not disabled for federation.
    pub(super) fn origin_in_room(&self, origin: &ServerName, room: &RoomId) -> Result<bool> {
        if super::disabled_rooms::is_disabled(&self.storage, room)?
            || !self.sender.servers_of_room(room)?.contains(origin)
        {
            return Ok(false);
        }
        acl_allows(&self.storage, room, origin)
    }

    /// Deletes records of transactions older than [`TRANSACTION_MEMORY`]; returns how many.
    pub async fn purge_old_transactions(&self) -> Result<usize> {
        let cutoff = self
            .time
            .now_ms()
            .saturating_sub(u64::try_from(TRANSACTION_MEMORY.as_millis()).unwrap_or(u64::MAX));
        let mut batch = Batch::new();
        let mut purged = 0;
        INBOUND_TRANSACTIONS_TABLE.scan(
            self.storage.engine(),
            b"",
            None,
            Direction::Forward,
            |key, Json(record)| {
                if record.received_ms < cutoff {
                    INBOUND_TRANSACTIONS_TABLE.delete(&mut batch, &key);
                    purged += 1;
                }
                std::ops::ControlFlow::Continue(())
            },
        )?;
        if purged > 0 {
            self.storage.writer().commit(batch).await?;
        }
        Ok(purged)
    }
}

/// Removes a transaction from the running list when its application ends, however it ends.
struct Running<'a> {
    map: &'a DashMap<(OwnedServerName, String), Instant>,
    key: (OwnedServerName, String),
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.map.remove(&self.key);
    }
}

fn response(pdus: Answer) -> send_transaction_message::v1::Response {
    let mut response = send_transaction_message::v1::Response::default();
    for (event_id, error) in pdus {
        if let Ok(event_id) = OwnedEventId::try_from(event_id) {
            response.pdus.insert(event_id, error.map_or(Ok(()), Err));
        }
    }
    response
}

/// Whether the server ACL of `room` (as it is now) lets `origin` in; a room this server
/// does not know has none.
fn acl_allows(storage: &Storage, room: &RoomId, origin: &ServerName) -> Result<bool> {
    let Some(record) = rooms::room(storage, room)? else { return Ok(true) };
    let Some(heads) = rooms::heads(storage.engine(), record.short)? else { return Ok(true) };
    acl::room_allows(storage, heads.snapshot, origin)
}
