//! The destination actor: one per remote server with something to send, the only sender to
//! that server and the only one that takes entries out of its queue.
//!
//! Its queue is the server's rows in `destination_queue`, in stream order (the fan-out puts
//! them there). It sends at most one transaction at a time: up to 50 PDUs and 100 EDUs,
//! first recorded as the transaction in flight (id and entries), so that a retry, even after
//! a restart, sends the same transaction under the same id and the receiver can tell it has
//! seen it. When the server accepts it, its entries and the record go in one commit. When
//! the server cannot be reached or fails, the actor waits (exponential backoff from
//! `sender_retry_backoff_min_ms`, capped at `sender_retry_backoff_limit`) and retries; a
//! message that the server is back (it sent us a transaction, or an admin reset its backoff)
//! retries at once. A transaction the server refuses as it is (400, 403, 404, 413) is
//! dropped rather than retried forever.
//!
//! With an empty queue and nothing in flight the actor passivates; while it waits out a
//! backoff with work queued it stays, holding the timer.

use std::{
    ops::ControlFlow,
    sync::Arc,
    time::{Duration, Instant},
};

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedTransactionId, UInt,
    api::federation::transactions::send_transaction_message, serde::Raw,
};
use serde_json::value::RawValue as RawJsonValue;

use super::status::{Phase, Statuses};
use crate::{
    Result,
    actors::{Behaviour, Context, Reply},
    federation::client::{FederationClient, OutboundError},
    rooms,
    shutdown::Shutdown,
    storage::{
        Batch, Direction, Storage,
        codec::{Json, prefix},
        federation::{IN_FLIGHT_TABLE, InFlightTransaction, QUEUE_TABLE, QueuedItem},
    },
    time::Time,
};

/// The spec's bounds on one transaction.
pub const MAX_PDUS: usize = 50;
pub const MAX_EDUS: usize = 100;
/// Queue rows looked at to fill one transaction (skipping what is stale or full).
const SCAN_LIMIT: usize = 1000;
/// Queue rows counted when an actor starts, for its status; a longer queue shows this many.
const COUNT_LIMIT: usize = 1_000_000;

/// Timing of the senders, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct SenderSettings {
    /// How long one transaction may take (`sender_timeout`).
    pub timeout: Duration,
    /// The first wait after a failure (`sender_retry_backoff_min_ms`).
    pub backoff_min: Duration,
    /// The longest wait (`sender_retry_backoff_limit`).
    pub backoff_max: Duration,
    /// How long a queued typing notice is worth sending (`typing_federation_timeout_s`).
    pub typing_ttl: Duration,
    /// How long a transaction on its way may still take once the server stops
    /// (`sender_shutdown_timeout`).
    pub shutdown_grace: Duration,
}

impl SenderSettings {
    /// The wait after `failures` consecutive failures.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.backoff_min.saturating_mul(1 << doublings).min(self.backoff_max.max(self.backoff_min))
    }
}

pub enum DestinationMessage {
    /// Entries were queued: send them unless the actor is waiting out a backoff.
    Work,
    /// The server is up (it sent this server a transaction): forget the backoff and send.
    Online,
    /// A timer: the backoff may have run out, or the last transaction left more queued.
    Retry,
    /// An admin asked to forget the failures and send now; answers whether anything is
    /// queued.
    ResetBackoff { reply: Reply<bool> },
}

pub struct DestinationState {
    /// Consecutive failures.
    failures: u32,
    /// While waiting out a backoff: when the next attempt is due.
    retry_at: Option<Instant>,
    /// Something may be queued or in flight.
    pending: bool,
    /// For transaction ids: attempts built by this actor.
    built: u64,
}

pub struct DestinationActor {
    pub storage: Arc<Storage>,
    pub client: Arc<FederationClient>,
    pub statuses: Arc<Statuses>,
    pub settings: SenderSettings,
    pub shutdown: Shutdown,
    /// What transactions and typing notices are dated by.
    pub time: Time,
}

/// A transaction ready to send.
struct Outgoing {
    txn_id: String,
    created_ms: u64,
    entries: Vec<u64>,
    pdus: Vec<Box<RawJsonValue>>,
    edus: Vec<Raw<ruma::api::federation::transactions::edu::Edu>>,
}

/// What became of an attempt.
enum Outcome {
    /// Nothing queued.
    Empty,
    /// Accepted; more may be queued.
    Sent,
    /// Refused as it is: dropped.
    Dropped,
    /// Not delivered: wait, then retry it.
    Failed(String),
    /// The server is stopping; the transaction stays in flight for the next start.
    Stopping,
}

impl Behaviour for DestinationActor {
    type Key = OwnedServerName;
    type Message = DestinationMessage;
    type State = DestinationState;

    const KIND: &'static str = "destination";

    async fn start(&self, server: &OwnedServerName) -> Result<DestinationState> {
        let engine = self.storage.engine();
        let mut queued = 0usize;
        QUEUE_TABLE.scan_keys(
            engine,
            &prefix(&server.as_str()),
            None,
            Direction::Forward,
            |_| {
                queued += 1;
                if queued >= COUNT_LIMIT {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )?;
        let in_flight = IN_FLIGHT_TABLE.contains(engine, &server.to_string())?;
        self.statuses.update(server, |status| status.queued = queued as u64);
        Ok(DestinationState {
            failures: 0,
            retry_at: None,
            pending: queued > 0 || in_flight,
            built: 0,
        })
    }

    async fn handle(
        &self,
        context: &Context<Self>,
        message: DestinationMessage,
        state: &mut DestinationState,
    ) -> Result<()> {
        let server = &context.key;
        if self.shutdown.is_triggered() {
            // What is queued stays for the next start.
            if let DestinationMessage::ResetBackoff { reply } = message {
                let _ = reply.send(state.pending);
            }
            return Ok(());
        }
        match message {
            DestinationMessage::Work => {
                state.pending = true;
                if state.retry_at.is_some_and(|due| due > Instant::now()) {
                    return Ok(());
                }
            }
            DestinationMessage::Retry => {
                if state.retry_at.is_some_and(|due| due > Instant::now()) {
                    // A timer from an earlier backoff; a later one is armed.
                    return Ok(());
                }
            }
            DestinationMessage::Online => {
                if state.retry_at.is_none() && !state.pending {
                    return Ok(());
                }
                state.failures = 0;
                state.retry_at = None;
            }
            DestinationMessage::ResetBackoff { reply } => {
                state.failures = 0;
                state.retry_at = None;
                self.statuses.update(server, |status| {
                    status.failures = 0;
                    status.phase = Phase::Idle;
                });
                let _ = reply.send(state.pending);
            }
        }
        state.retry_at = None;
        match self.attempt(server, state).await? {
            Outcome::Empty => {
                state.pending = false;
                self.statuses.update(server, |status| {
                    status.phase = Phase::Idle;
                    status.queued = 0;
                });
            }
            Outcome::Sent | Outcome::Dropped => {
                state.failures = 0;
                state.pending = true;
                // The next transaction, after whatever else arrived meanwhile.
                context.send_after(Duration::ZERO, DestinationMessage::Retry);
            }
            Outcome::Failed(error) => {
                state.failures = state.failures.saturating_add(1);
                let wait = self.settings.backoff(state.failures);
                let due = Instant::now() + wait;
                state.retry_at = Some(due);
                state.pending = true;
                tracing::info!(%server, failures = state.failures, ?wait, %error, "sending failed; backing off");
                let failures = state.failures;
                self.statuses.update(server, |status| {
                    status.phase = Phase::Backoff(due);
                    status.failures = failures;
                    status.failed += 1;
                    status.last_error = Some(error);
                });
                context.send_after(wait, DestinationMessage::Retry);
            }
            Outcome::Stopping => {}
        }
        Ok(())
    }

    fn can_passivate(&self, state: &DestinationState) -> bool {
        !state.pending && state.retry_at.is_none()
    }

    fn restart_eagerly(&self) -> bool {
        true
    }

    fn wake_after_failure(&self, _server: &OwnedServerName) -> Option<DestinationMessage> {
        // Its queue is in the database; a fresh actor picks it up.
        Some(DestinationMessage::Work)
    }
}

impl DestinationActor {
    /// Sends the transaction in flight, or builds one from the queue and sends it.
    async fn attempt(
        &self,
        server: &OwnedServerName,
        state: &mut DestinationState,
    ) -> Result<Outcome> {
        let Some(outgoing) = self.outgoing(server, state).await? else {
            return Ok(Outcome::Empty);
        };
        self.statuses.update(server, |status| status.phase = Phase::Sending);
        let mut request = send_transaction_message::v1::Request::new(
            OwnedTransactionId::from(outgoing.txn_id.as_str()),
            self.client.origin().to_owned(),
            MilliSecondsSinceUnixEpoch(UInt::new_saturating(outgoing.created_ms)),
        );
        request.pdus = outgoing.pdus;
        request.edus = outgoing.edus;
        let sending = self.client.send_with_timeout(server, request, self.settings.timeout);
        let stopping = async {
            self.shutdown.clone().wait().await;
            tokio::time::sleep(self.settings.shutdown_grace).await;
        };
        let result = tokio::select! {
            result = sending => result,
            () = stopping => return Ok(Outcome::Stopping),
        };
        let label = server.to_string();
        let outcome = match result {
            Ok(response) => {
                for (event_id, result) in &response.pdus {
                    if let Err(error) = result {
                        tracing::debug!(%server, %event_id, %error, "the server refused an event");
                    }
                }
                Outcome::Sent
            }
            Err(error @ OutboundError::Refused(_)) => {
                tracing::warn!(%server, %error, "dropping a transaction this server may not send");
                Outcome::Dropped
            }
            Err(OutboundError::Remote { status: 400 | 403 | 404 | 413, errcode, message }) => {
                tracing::warn!(%server, %errcode, %message, txn = %outgoing.txn_id, "the server refused a transaction; dropping it");
                Outcome::Dropped
            }
            Err(error) => Outcome::Failed(error.to_string()),
        };
        let kind = match &outcome {
            Outcome::Sent => "sent",
            Outcome::Dropped => "dropped",
            _ => "failed",
        };
        metrics::counter!("tuwunel_federation_transactions_total", "destination" => label, "outcome" => kind)
            .increment(1);
        if matches!(outcome, Outcome::Sent | Outcome::Dropped) {
            self.finish(server, &outgoing.entries).await?;
            let done = outgoing.entries.len() as u64;
            let sent = matches!(outcome, Outcome::Sent);
            self.statuses.update(server, |status| {
                status.queued = status.queued.saturating_sub(done);
                status.failures = 0;
                status.phase = Phase::Idle;
                if sent {
                    status.sent += 1;
                } else {
                    status.failed += 1;
                }
            });
        }
        Ok(outcome)
    }

    /// Deletes a finished transaction's entries and its in-flight record, in one commit.
    async fn finish(&self, server: &OwnedServerName, entries: &[u64]) -> Result<()> {
        let mut batch = Batch::new();
        let key = server.to_string();
        for position in entries {
            QUEUE_TABLE.delete(&mut batch, &(key.clone(), *position));
        }
        IN_FLIGHT_TABLE.delete(&mut batch, &key);
        self.storage.writer().commit(batch).await
    }

    /// The transaction in flight, or a new one from the head of the queue (recorded as in
    /// flight before it is sent); `None` when nothing is queued.
    async fn outgoing(
        &self,
        server: &OwnedServerName,
        state: &mut DestinationState,
    ) -> Result<Option<Outgoing>> {
        let engine = self.storage.engine();
        let key = server.to_string();
        if let Some(Json(in_flight)) = IN_FLIGHT_TABLE.get(engine, &key)? {
            let mut items = Vec::with_capacity(in_flight.entries.len());
            for position in &in_flight.entries {
                if let Some(Json(item)) =
                    QUEUE_TABLE.get_readable(engine, &(key.clone(), *position))?
                {
                    items.push(item);
                }
            }
            return Ok(Some(self.assemble(in_flight, items)?));
        }

        let typing_cutoff = self.time.now_ms().saturating_sub(
            u64::try_from(self.settings.typing_ttl.as_millis()).unwrap_or(u64::MAX),
        );
        // Bounded: each round either fills a transaction or deletes up to SCAN_LIMIT stale
        // typing notices from a queue that cannot grow meanwhile (only this actor builds).
        loop {
            let mut batch = Batch::new();
            let mut entries = Vec::new();
            let mut items = Vec::new();
            let (mut pdus, mut edus, mut scanned, mut stale) = (0usize, 0usize, 0usize, 0u64);
            QUEUE_TABLE.scan(
                engine,
                &prefix(&key.as_str()),
                None,
                Direction::Forward,
                |(_, position), Json(item)| {
                    scanned += 1;
                    match &item {
                        QueuedItem::Pdu { .. } if pdus < MAX_PDUS => {
                            pdus += 1;
                            entries.push(position);
                            items.push(item);
                        }
                        QueuedItem::Edu { edu, queued_ms }
                            if *queued_ms < typing_cutoff
                                && edu.get("edu_type").and_then(|kind| kind.as_str())
                                    == Some("m.typing") =>
                        {
                            // Long expired on the other side: a queue resumed after an
                            // outage skips it.
                            QUEUE_TABLE.delete(&mut batch, &(key.clone(), position));
                            stale += 1;
                        }
                        QueuedItem::Edu { .. } if edus < MAX_EDUS => {
                            edus += 1;
                            entries.push(position);
                            items.push(item);
                        }
                        _ => {}
                    }
                    if (pdus >= MAX_PDUS && edus >= MAX_EDUS) || scanned >= SCAN_LIMIT {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                },
            )?;
            if stale > 0 {
                self.statuses
                    .update(server, |status| status.queued = status.queued.saturating_sub(stale));
            }
            if entries.is_empty() {
                if !batch.is_empty() {
                    self.storage.writer().commit(batch).await?;
                }
                // Stale typing notices were all there was, unless the scan stopped early.
                if scanned >= SCAN_LIMIT {
                    continue;
                }
                return Ok(None);
            }
            state.built += 1;
            let created_ms = self.time.now_ms();
            // Unique per destination: the time, and this actor's count against a clock step.
            let in_flight = InFlightTransaction {
                txn_id: format!("{created_ms}.{}", state.built),
                entries,
                created_ms,
            };
            IN_FLIGHT_TABLE.put(&mut batch, &key, &Json(in_flight.clone()));
            self.storage.writer().commit(batch).await?;
            return Ok(Some(self.assemble(in_flight, items)?));
        }
    }

    /// The transaction's body: each PDU in the form other servers see, each EDU as queued.
    fn assemble(&self, in_flight: InFlightTransaction, items: Vec<QueuedItem>) -> Result<Outgoing> {
        let mut pdus = Vec::new();
        let mut edus = Vec::new();
        for item in items {
            match item {
                QueuedItem::Pdu { event } => {
                    let Some(pdu) = rooms::readable_pdu(self.storage.engine(), event)? else {
                        continue;
                    };
                    let Some(room) = rooms::room(&self.storage, &pdu.room_id)? else {
                        continue;
                    };
                    let json = pdu.federation_json(&room.version)?;
                    pdus.push(serde_json::value::to_raw_value(&json)?);
                }
                QueuedItem::Edu { edu, .. } => {
                    edus.push(Raw::from_json(serde_json::value::to_raw_value(&edu)?));
                }
            }
        }
        Ok(Outgoing {
            txn_id: in_flight.txn_id,
            created_ms: in_flight.created_ms,
            entries: in_flight.entries,
            pdus,
            edus,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_minimum_and_stops_at_the_limit() {
        let settings = SenderSettings {
            timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            typing_ttl: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(1),
        };
        assert_eq!(settings.backoff(1), Duration::from_millis(100));
        assert_eq!(settings.backoff(2), Duration::from_millis(200));
        assert_eq!(settings.backoff(4), Duration::from_millis(800));
        assert_eq!(settings.backoff(5), Duration::from_secs(1));
        assert_eq!(settings.backoff(u32::MAX), Duration::from_secs(1));
    }
}
