//! Sending to other servers: the fan-out from the outbox to each server's queue
//! ([`fanout`]), one destination actor per server sending its queue as transactions
//! ([`destination`]), which servers share a room or a user ([`servers`]) and each
//! destination's status ([`status`]).
//!
//! At startup the servers with something queued or in flight are woken a few at a time
//! (`startup_netburst`), so a server that was down for a day does not open connections to
//! every other server at once.

pub mod destination;
pub mod fanout;
pub mod servers;
pub mod status;

use std::{collections::BTreeSet, ops::ControlFlow, sync::Arc, time::Duration};

use ruma::{OwnedServerName, RoomId, ServerName};

use self::{
    destination::{DestinationActor, DestinationMessage, SenderSettings},
    servers::RoomServers,
    status::{Phase, Statuses},
};
use super::{client::FederationClient, policy::ServerPolicy};
use crate::{
    Config, Result,
    actors::{ActorSystem, Limits, Registry, tasks},
    shutdown::Shutdown,
    storage::{
        Direction, Storage,
        federation::{IN_FLIGHT_TABLE, QUEUE_TABLE},
    },
    time::Time,
};

/// Pause between two destinations woken at startup.
const STARTUP_WAKE_SPACING: Duration = Duration::from_millis(20);

/// The sending side of federation.
pub struct Sender {
    server_name: OwnedServerName,
    storage: Arc<Storage>,
    policy: Arc<ServerPolicy>,
    statuses: Arc<Statuses>,
    servers: RoomServers,
    /// One actor per destination.
    pub destinations: Registry<DestinationActor>,
    /// What queue entries are dated by.
    time: Time,
    /// Device names go out with device list updates (`allow_device_name_federation`).
    device_names: bool,
    shutdown: Shutdown,
}

impl Sender {
    /// Starts the destination actors' registry, the fan-out, and (with `startup_netburst`)
    /// the gradual wake-up of destinations with work left from the last run.
    pub async fn start(
        config: &Config,
        storage: Arc<Storage>,
        client: Arc<FederationClient>,
        policy: Arc<ServerPolicy>,
        actors: &ActorSystem,
        shutdown: Shutdown,
        time: Time,
    ) -> Result<Arc<Self>> {
        let statuses = Arc::new(Statuses::default());
        let settings = SenderSettings {
            timeout: Duration::from_secs(config.sender_timeout.max(1)),
            backoff_min: Duration::from_millis(config.sender_retry_backoff_min_ms.max(1)),
            backoff_max: Duration::from_secs(config.sender_retry_backoff_limit),
            typing_ttl: Duration::from_secs(config.typing_federation_timeout_s),
            shutdown_grace: Duration::from_secs(config.sender_shutdown_timeout),
        };
        let behaviour = DestinationActor {
            storage: Arc::clone(&storage),
            client,
            statuses: Arc::clone(&statuses),
            settings,
            shutdown: shutdown.clone(),
            time: time.clone(),
        };
        let limits = Limits {
            idle_timeout: Duration::from_secs(config.actor_idle_timeout_s.max(1)),
            mailbox_limit: config.actor_mailbox_limit.max(1),
        };
        let destinations = actors.registry(behaviour, limits).await?;
        let sender = Arc::new(Self {
            server_name: config.server_name.clone(),
            storage,
            policy,
            statuses,
            servers: RoomServers::new(config.server_name.clone()),
            destinations,
            time,
            device_names: config.allow_device_name_federation,
            shutdown,
        });
        let fanning = Arc::clone(&sender);
        tasks::supervise("federation_fanout", move || fanout::run(Arc::clone(&fanning)));
        if config.startup_netburst && config.allow_federation {
            tasks::spawn("federation_wake", Arc::clone(&sender).wake_pending());
        }
        Ok(sender)
    }

    /// Every destination's status.
    pub fn statuses(&self) -> &Statuses {
        &self.statuses
    }

    /// The other servers with a member joined to `room`.
    pub fn servers_of_room(&self, room: &RoomId) -> Result<BTreeSet<OwnedServerName>> {
        Ok(self.servers.of_room(&self.storage, room)?.as_ref().clone())
    }

    /// `server` showed it is up (it sent a transaction): if anything waits for it, send now
    /// instead of at the end of its backoff.
    pub async fn online(&self, server: &ServerName) {
        let waiting = self
            .statuses
            .get(server)
            .is_some_and(|status| matches!(status.phase, Phase::Backoff(_)) || status.queued > 0);
        if waiting {
            let _ = self.destinations.send(&server.to_owned(), DestinationMessage::Online).await;
        }
    }

    /// Forgets `server`'s failures and sends what is queued for it now; answers whether
    /// anything is queued.
    pub async fn reset_backoff(&self, server: &ServerName) -> Result<bool> {
        self.destinations
            .call(
                &server.to_owned(),
                |reply| DestinationMessage::ResetBackoff { reply },
                Duration::from_secs(30),
            )
            .await
    }

    /// The servers with entries queued or a transaction in flight, from the database.
    pub fn destinations_with_work(&self) -> Result<BTreeSet<OwnedServerName>> {
        let engine = self.storage.engine();
        let mut servers = BTreeSet::new();
        // One seek per server: after a server's first entry, jump past its last possible one.
        let mut from: Option<(String, u64)> = None;
        loop {
            let mut next = None;
            QUEUE_TABLE.scan_keys(
                engine,
                b"",
                from.as_ref(),
                Direction::Forward,
                |(server, _)| {
                    if from.as_ref().is_some_and(|(previous, _)| *previous == server) {
                        return ControlFlow::Continue(());
                    }
                    next = Some(server);
                    ControlFlow::Break(())
                },
            )?;
            let Some(server) = next else { break };
            if let Ok(name) = ServerName::parse(&server) {
                servers.insert(name);
            }
            from = Some((server, u64::MAX));
        }
        IN_FLIGHT_TABLE.scan_keys(engine, b"", None, Direction::Forward, |server| {
            if let Ok(name) = ServerName::parse(&server) {
                servers.insert(name);
            }
            ControlFlow::Continue(())
        })?;
        Ok(servers)
    }

    /// Wakes the destinations with work left from the last run, one every
    /// [`STARTUP_WAKE_SPACING`].
    async fn wake_pending(self: Arc<Self>) {
        let servers = match self.destinations_with_work() {
            Ok(servers) => servers,
            Err(error) => {
                tracing::error!(%error, "cannot list the servers with queued transactions");
                return;
            }
        };
        if !servers.is_empty() {
            tracing::info!(servers = servers.len(), "resuming sending to servers with queued work");
        }
        for server in servers {
            let _ = self.destinations.send(&server, DestinationMessage::Work).await;
            tokio::select! {
                () = tokio::time::sleep(STARTUP_WAKE_SPACING) => {}
                () = self.shutdown.clone().wait() => return,
            }
        }
    }

    /// Stops the destination actors; a transaction still on its way stays in flight for
    /// the next start.
    pub async fn shutdown(&self, timeout: Duration) {
        self.destinations.shutdown(timeout).await;
    }
}
