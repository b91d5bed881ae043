//! Everything a request handler or an actor may need, shared behind one `Arc`: the
//! configuration, the database, the actor registries, the signing key, federation, metrics.

use std::{sync::Arc, time::Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

use crate::{
    Config,
    accounts::Accounts,
    actors::ActorSystem,
    federation::{Federation, SigningKey},
    media::Media,
    rooms::Rooms,
    shutdown::Shutdown,
    storage::Storage,
    sync::{self, hub::SyncHub},
    time::Time,
};

pub struct Services {
    pub config: Config,
    pub storage: Arc<Storage>,
    pub actors: ActorSystem,
    pub accounts: Accounts,
    /// Application services: registrations and what is owed to them.
    pub appservices: Arc<crate::appservices::Appservices>,
    pub rooms: Arc<Rooms>,
    pub presence: crate::presence::Presence,
    /// Push rules cache and pusher actors.
    pub push: Arc<crate::push::pushers::Push>,
    /// The media repository.
    pub media: Media,
    /// Wakes waiting /sync requests.
    pub hub: Arc<SyncHub>,
    /// Every device's sliding sync connections.
    pub sliding: Arc<sync::sliding::connections::Connections>,
    pub signing_key: Arc<SigningKey>,
    /// Discovery, keys, the outbound client and the policy towards other servers.
    pub federation: Arc<Federation>,
    pub metrics: Option<PrometheusHandle>,
    /// Permits for requests in flight (`max_in_flight_requests`).
    pub in_flight: Arc<Semaphore>,
    pub started: Instant,
    /// The clock of everything the server dates or times out (not its own housekeeping).
    pub time: Time,
    pub shutdown: Shutdown,
}
