//! Federation: this server's identity towards other servers and the transport to them.
//!
//! - [`signing_key`]: the ed25519 key that signs events, key documents and requests;
//! - [`policy`]: which servers may be talked to (`allow_federation`, the server name lists);
//! - [`acl`]: which servers a room lets in (`m.room.server_acl`);
//! - [`dns`] and [`discovery`]: from a server name to an address, port and TLS name, as the
//!   spec orders it, cached;
//! - [`client`]: the one outbound client, signing requests with `X-Matrix`;
//! - [`keys`]: other servers' signing keys (fetched directly or through notaries, stored)
//!   and the notary service;
//! - [`request_auth`]: checking the `X-Matrix` signature of incoming requests;
//! - [`flight`]: sharing one fetch or lookup between concurrent callers;
//! - [`media`] and [`multipart`]: other servers' media, fetched for our clients;
//! - [`outbox`]: how the rest of the server hands events and EDUs to other servers, in the
//!   commit that produced them;
//! - [`sender`]: the fan-out from the outbox to each server's queue, and one destination
//!   actor per server sending its queue as transactions, with backoff;
//! - [`intake`] and [`edus`]: transactions other servers send, applied once;
//! - [`events`]: events other servers send, checked (format, signatures, hashes) before any
//!   room sees them;
//! - [`disabled_rooms`]: rooms an admin took out of federation.
//!
//! The HTTP front door for other servers (`/_matrix/federation/*`, `/_matrix/key/*`) is
//! `crate::http::federation`.

pub mod acl;
pub mod client;
pub mod disabled_rooms;
pub mod discovery;
pub mod dns;
pub mod edus;
pub mod events;
pub mod flight;
pub mod intake;
pub mod keys;
pub mod media;
pub mod multipart;
pub mod outbox;
pub mod policy;
pub mod request_auth;
pub mod sender;
pub mod signing_key;

use std::{sync::Arc, time::Duration};

use ruma::{OwnedServerName, ServerName};

pub use self::signing_key::SigningKey;
use self::{
    client::{ClientSettings, FederationClient},
    discovery::Discovery,
    dns::Dns,
    keys::{KeySettings, ServerKeys},
    policy::ServerPolicy,
};
use self::{intake::Intake, sender::Sender};
use crate::{
    Config, Error, Result,
    actors::{ActorSystem, Registry},
    net::ssrf::IpDenylist,
    rooms::actor::RoomActor,
    shutdown::Shutdown,
    storage::Storage,
    sync::hub::SyncHub,
    time::Time,
};

/// How many heavy history requests (state, backfill, missing events, auth chains) one other
/// server may have running at once.
pub const HEAVY_REQUESTS_PER_ORIGIN: usize = 2;

/// Everything federation needs, built once at startup.
pub struct Federation {
    pub server_name: OwnedServerName,
    pub policy: Arc<ServerPolicy>,
    pub client: Arc<FederationClient>,
    pub keys: Arc<ServerKeys>,
    /// Sending: the fan-out and the destination actors.
    pub sender: Arc<Sender>,
    /// Receiving transactions.
    pub intake: Arc<Intake>,
    /// Heavy history requests running per asking server (`http::federation::events`).
    pub heavy_requests: flight::PerKeyLimit<OwnedServerName>,
}

/// What federation is started with besides the configuration.
pub struct FederationDeps {
    pub storage: Arc<Storage>,
    pub signing_key: Arc<SigningKey>,
    pub hub: Arc<SyncHub>,
    pub rooms: Registry<RoomActor>,
    pub shutdown: Shutdown,
    pub time: Time,
}

impl Federation {
    /// Builds the transport and starts the sender (its destination actors run under
    /// `actors`) and the intake.
    pub async fn start(
        config: &Config,
        actors: &ActorSystem,
        deps: FederationDeps,
    ) -> Result<Self> {
        let FederationDeps { storage, signing_key, hub, rooms, shutdown, time } = deps;
        let policy = Arc::new(ServerPolicy::from_config(config)?);
        let denylist =
            Arc::new(IpDenylist::parse(&config.ip_range_denylist).map_err(Error::internal)?);
        let dns = Arc::new(Dns::from_config(config)?);
        let extra_roots = dns::extra_roots(config)?;
        let well_known_client = crate::net::outbound::client_builder()
            .connect_timeout(Duration::from_secs(config.well_known_conn_timeout))
            .timeout(Duration::from_secs(config.well_known_timeout))
            .tls_certs_merge(extra_roots.clone())
            .dns_resolver(dns::ConnectResolver::new(Arc::clone(&dns), Arc::clone(&denylist), None))
            .redirect(Discovery::redirect_policy(Arc::clone(&denylist)))
            .build()
            .map_err(|error| {
                Error::internal(format!("cannot build the .well-known client: {error}"))
            })?;
        let discovery =
            Arc::new(Discovery::new(Arc::clone(&dns), well_known_client, Arc::clone(&denylist)));
        let http = crate::net::outbound::client_builder()
            .tls_certs_merge(extra_roots)
            .dns_resolver(dns::ConnectResolver::new(
                Arc::clone(&dns),
                Arc::clone(&denylist),
                Some(discovery.connect_targets()),
            ))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(config.federation_idle_timeout))
            .pool_max_idle_per_host(usize::from(config.federation_idle_per_host))
            .build()
            .map_err(|error| {
                Error::internal(format!("cannot build the federation client: {error}"))
            })?;
        let timeout = Duration::from_secs(config.federation_timeout.max(1));
        let client = Arc::new(FederationClient::new(
            config.server_name.clone(),
            Arc::clone(&signing_key),
            Arc::clone(&policy),
            discovery,
            denylist,
            http,
            ClientSettings { timeout, max_response: config.max_request_size.as_usize() },
        ));
        let keys = Arc::new(ServerKeys::new(
            Arc::clone(&storage),
            signing_key,
            Arc::clone(&client),
            KeySettings {
                trusted_servers: config.trusted_servers.clone(),
                query_trusted_first: config.query_trusted_key_servers_first,
                only_trusted: config.only_query_trusted_key_servers,
                timeout,
            },
            time.clone(),
        ));
        let sender = Sender::start(
            config,
            Arc::clone(&storage),
            Arc::clone(&client),
            Arc::clone(&policy),
            actors,
            shutdown,
            time.clone(),
        )
        .await?;
        let intake = Arc::new(Intake::new(
            config,
            storage,
            hub,
            rooms,
            Arc::clone(&sender),
            Arc::clone(&client),
            Arc::clone(&keys),
            time.clone(),
        ));
        Ok(Self {
            server_name: config.server_name.clone(),
            policy,
            client,
            keys,
            sender,
            intake,
            heavy_requests: flight::PerKeyLimit::new(HEAVY_REQUESTS_PER_ORIGIN),
        })
    }

    /// Whether `server` is this server.
    pub fn is_local(&self, server: &ServerName) -> bool {
        server == self.server_name
    }
}
