//! The `Server`: what `main` and the integration tests start. It opens storage, starts the
//! actor system and the listeners, runs startup admin commands, and stops all of it in order.
//!
//! Stopping: listeners stop accepting and finish in-flight requests; actors drain their
//! mailboxes; the Writer commits what is queued and flushes; the database closes.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;

use crate::{
    Config, Error, Result, Services,
    accounts::Accounts,
    actors::{ActorSystem, contain::contained, tasks},
    admin,
    appservices::{self, Appservices},
    federation::{Federation, FederationDeps, SigningKey, media::FederatedMedia},
    http::{self, Listeners},
    media::Media,
    presence::Presence,
    push::pushers::Push,
    rooms::{self, Rooms},
    shutdown::Shutdown,
    storage::{self, Storage, schema::Outcome},
    sync::{
        hub::SyncHub,
        sliding::connections::{Connections, Limits},
    },
    time::Time,
};

/// How long actors get to drain their mailboxes.
const DRAIN_ACTORS: Duration = Duration::from_secs(10);
/// How often device activity is written to the database.
const ACTIVITY_FLUSH: Duration = Duration::from_secs(60);
/// How often freed actor memory is handed back to the system (when actors passivated).
const MEMORY_TRIM: Duration = Duration::from_secs(15);
/// After this long without a commit, memtables holding at least [`IDLE_FLUSH_MIN_BYTES`]
/// are flushed: a quiet server need not keep its write buffers (one per written table).
const IDLE_FLUSH_AFTER: Duration = Duration::from_secs(60);
const IDLE_FLUSH_MIN_BYTES: u64 = 1024 * 1024;
/// Originals of redacted events are checked for expiry every this many flushes (hourly).
const PURGE_EVERY_TICKS: u64 = 60;

/// Decides when a quiet server flushes its memtables: once per quiet spell, after
/// [`IDLE_FLUSH_AFTER`] without a commit, and only when they hold at least
/// [`IDLE_FLUSH_MIN_BYTES`] (a flush leaves a file per written table for compaction, not
/// worth it for a few rows).
struct IdleFlush {
    /// Commit groups as of the last look, and when that count was first seen.
    groups: u64,
    since: Instant,
    /// Commit groups as of the last flush.
    flushed_at: Option<u64>,
}

impl IdleFlush {
    fn new(groups: u64) -> Self {
        Self { groups, since: Instant::now(), flushed_at: None }
    }

    /// Whether to flush now, given the commit groups so far and the memtables' bytes.
    fn due(&mut self, groups: u64, memtables: u64, now: Instant) -> bool {
        if groups != self.groups {
            self.groups = groups;
            self.since = now;
            return false;
        }
        let due = now.duration_since(self.since) >= IDLE_FLUSH_AFTER
            && self.flushed_at != Some(groups)
            && memtables >= IDLE_FLUSH_MIN_BYTES;
        if due {
            self.flushed_at = Some(groups);
        }
        due
    }
}

/// The `meta` record naming the server a database belongs to.
const SERVER_NAME_RECORD: &str = "server_name";

/// Binds the database to `server_name`, or refuses it when it belongs to another name: user
/// and room IDs, signatures and tokens all carry the name, so a database started under
/// another one would serve accounts nobody can log in to. A database from before this record
/// existed is judged by its accounts (every account in it is local) and then stamped.
async fn claim_server_name(storage: &Storage, server_name: &ruma::ServerName) -> Result<()> {
    use crate::storage::{Direction, codec::Prefix, meta::RECORDS, users::USERS_TABLE};

    let engine = storage.engine();
    let stored = RECORDS
        .get(engine, &SERVER_NAME_RECORD.to_owned())?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    let owner = match &stored {
        Some(name) => Some(name.clone()),
        None => USERS_TABLE
            .collect(engine, &Prefix::all(), Direction::Forward, 1)?
            .into_iter()
            .next()
            .map(|(user, _)| user.server_name().to_string()),
    };
    if let Some(owner) = owner
        && owner != server_name.as_str()
    {
        return Err(Error::internal(format!(
            "the database at {} belongs to the server `{owner}`, but server_name is \
             `{server_name}`; a server's name cannot change once it has a database: set \
             server_name back to `{owner}`, or point database_path at an empty directory to \
             start a new server",
            engine.path().display()
        )));
    }
    if stored.is_none() {
        let mut batch = storage::Batch::new();
        RECORDS.put(
            &mut batch,
            &SERVER_NAME_RECORD.to_owned(),
            &server_name.as_str().as_bytes().to_vec(),
        );
        storage.writer().commit(batch).await?;
    }
    Ok(())
}

/// One minute's housekeeping (see `Server::flush_activity_periodically`).
async fn housekeeping(services: Arc<Services>, ticks: u64) {
    if let Err(error) = services.accounts.flush_last_seen().await {
        tracing::warn!(%error, "saving device activity failed");
    }
    services.hub.prune();
    services.sliding.sweep();
    if !ticks.is_multiple_of(PURGE_EVERY_TICKS) {
        return;
    }
    match rooms::purge_unredacted(
        &services.storage,
        services.config.redaction_retention_seconds,
        services.time.now_ms(),
    )
    .await
    {
        Ok(0) => {}
        Ok(purged) => tracing::info!(purged, "discarded originals of old redactions"),
        Err(error) => tracing::warn!(%error, "purging redacted originals failed"),
    }
    match services.federation.intake.purge_old_transactions().await {
        Ok(0) => {}
        Ok(purged) => tracing::info!(purged, "discarded old records of received transactions"),
        Err(error) => tracing::warn!(%error, "purging old received transactions failed"),
    }
    match crate::push::retention::purge_notifications(
        &services.storage,
        services.config.notification_retention_seconds,
        services.time.now_ms(),
    )
    .await
    {
        Ok(0) => {}
        Ok(purged) => tracing::info!(purged, "discarded old notifications"),
        Err(error) => tracing::warn!(%error, "purging old notifications failed"),
    }
    match services.media.apply_retention().await {
        Ok((0, _)) => {}
        Ok((deleted, bytes)) => tracing::info!(deleted, bytes, "deleted unused media"),
        Err(error) => tracing::warn!(%error, "deleting unused media failed"),
    }
}

/// Distinguishes servers that share a process (their actor names must not collide).
static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// A running homeserver.
pub struct Server {
    services: Arc<Services>,
    listeners: Listeners,
    failure: Arc<Mutex<Option<String>>>,
}

impl Server {
    /// Opens the database and starts serving, on the system clock.
    pub async fn start(config: Config) -> Result<Self> {
        Self::start_with(config, Time::system()).await
    }

    /// Like [`Server::start`], with the clock the server's domain time runs on (tests pass a
    /// `time::ManualClock`).
    pub async fn start_with(config: Config, time: Time) -> Result<Self> {
        let server_name = config.server_name.clone();
        let configured_appservices = appservices::from_config(&config)?;
        if config.development {
            tracing::warn!(
                "no configuration file given: running a development server named `{}` with its \
                 database in {}; see tuwunel.toml.example to configure a real one",
                config.server_name,
                config.database_path.display()
            );
        }
        let engine_options = storage::engine_options(&config);
        let backup_directory = config.database_backup_path.clone();
        let keep = usize::try_from(config.database_backups_to_keep).unwrap_or(0);
        let (storage, outcome) =
            tokio::task::spawn_blocking(move || Storage::open(&engine_options)).await.map_err(
                |error| Error::internal(format!("opening the database panicked: {error}")),
            )??;
        let storage = Arc::new(storage.with_backups(backup_directory, keep));
        match outcome {
            Outcome::Created => {
                tracing::warn!(path = %config.database_path.display(), "created a new database")
            }
            Outcome::Current => {
                tracing::info!(path = %config.database_path.display(), "opened the database")
            }
            Outcome::Migrated { from } => tracing::warn!(from, "migrated the database"),
        }

        let started =
            Self::assemble(config, Arc::clone(&storage), server_name, time, configured_appservices)
                .await;
        match started {
            Ok(server) => Ok(server),
            Err(error) => {
                storage.close().await;
                Err(error)
            }
        }
    }

    async fn assemble(
        config: Config,
        storage: Arc<Storage>,
        server_name: ruma::OwnedServerName,
        time: Time,
        configured_appservices: Vec<appservices::Registration>,
    ) -> Result<Self> {
        claim_server_name(&storage, &server_name).await?;
        let signing_key =
            Arc::new(SigningKey::load_or_generate(&storage, server_name.clone()).await?);
        let namespace = format!("{server_name}#{}", INSTANCES.fetch_add(1, Ordering::Relaxed));
        let actors = ActorSystem::start(namespace, time.clone()).await?;
        let hub = Arc::new(SyncHub::default());
        let accounts =
            Accounts::start(&config, Arc::clone(&storage), &actors, Arc::clone(&hub), time.clone())
                .await?;
        accounts.bootstrap_registration(&config).await?;
        let appservices =
            match Appservices::start(configured_appservices, &config, &storage, &accounts).await {
                Ok(appservices) => Arc::new(appservices),
                Err(error) => {
                    actors.shutdown(DRAIN_ACTORS).await;
                    return Err(error);
                }
            };
        let presence =
            Presence::start(&config, Arc::clone(&storage), Arc::clone(&hub), &actors, time.clone())
                .await?;
        let push =
            Arc::new(Push::start(&config, Arc::clone(&storage), &actors, time.clone()).await?);
        let rooms = Arc::new(
            Rooms::start(
                &config,
                Arc::clone(&storage),
                Arc::clone(&signing_key),
                &actors,
                Arc::clone(&hub),
                Arc::clone(&push),
                time.clone(),
            )
            .await?,
        );
        let mut media = Media::start(&config, Arc::clone(&storage), &actors, time.clone()).await?;
        let shutdown = Shutdown::new();
        let federation = Federation::start(
            &config,
            &actors,
            FederationDeps {
                storage: Arc::clone(&storage),
                signing_key: Arc::clone(&signing_key),
                hub: Arc::clone(&hub),
                rooms: rooms.actors.clone(),
                shutdown: shutdown.clone(),
                time: time.clone(),
            },
        )
        .await;
        let federation = match federation {
            Ok(federation) => Arc::new(federation),
            Err(error) => {
                shutdown.trigger();
                actors.shutdown(DRAIN_ACTORS).await;
                return Err(error);
            }
        };
        media.set_remote(Arc::new(FederatedMedia::new(
            Arc::clone(&federation.client),
            config.request_legacy_media,
        )));
        let sliding = Arc::new(Connections::new(
            Limits {
                max_connections: config.sliding_sync_max_connections,
                idle_timeout: Duration::from_secs(config.sliding_sync_connection_timeout_s),
            },
            time.clone(),
        ));
        let metrics = if config.metrics_enabled { http::metrics::install() } else { None };
        let services = Arc::new(Services {
            in_flight: Arc::new(Semaphore::new(config.max_in_flight_requests.max(1))),
            config,
            storage,
            actors,
            accounts,
            appservices,
            rooms,
            presence,
            push,
            media,
            hub,
            sliding,
            signing_key,
            federation,
            metrics,
            started: Instant::now(),
            time,
            shutdown: shutdown.clone(),
        });
        // The command hook holds `services` weakly: it lives inside them, in the rooms'
        // listeners.
        let admin_room =
            rooms::admin_room::ensure(&services.accounts, &services.rooms, &services.config)
                .await
                .and_then(|room| admin::hook::CommandHook::subscribe(&services, room));
        if let Err(error) = admin_room {
            shutdown.trigger();
            services.actors.shutdown(DRAIN_ACTORS).await;
            return Err(error);
        }
        let listeners = match http::serve(&services, &shutdown).await {
            Ok(listeners) => listeners,
            Err(error) => {
                shutdown.trigger();
                services.actors.shutdown(DRAIN_ACTORS).await;
                return Err(error);
            }
        };
        let server = Self { services, listeners, failure: Arc::new(Mutex::new(None)) };
        server.stop_if_the_writer_dies();
        server.run_startup_commands();
        server.flush_activity_periodically();
        server.trim_memory_periodically();
        server.replay_staged_pdus();
        Ok(server)
    }

    /// Processes the events of other servers' transactions that were acknowledged but not
    /// processed before the last stop.
    fn replay_staged_pdus(&self) {
        let intake = Arc::clone(&self.services.federation.intake);
        tasks::spawn("federation_transaction", async move {
            if let Err(error) = intake.replay_staged().await {
                tracing::error!(%error, "processing the events staged before the last stop failed");
            }
        });
    }

    /// Runs `admin_signal_execute` (on SIGUSR2): commands an operator wants on a running
    /// server without an admin room, such as an online backup.
    pub fn signal_commands(services: &Arc<Services>) {
        let commands = services.config.admin_signal_execute.clone();
        if commands.is_empty() {
            tracing::info!("SIGUSR2 received but admin_signal_execute is empty");
            return;
        }
        let services = Arc::clone(services);
        tasks::spawn("admin_signal_command", async move {
            for command in commands {
                match contained(admin::execute(&services, &command)).await {
                    Ok(Ok(output)) => tracing::info!(%command, "{output}"),
                    Ok(Err(error)) => {
                        tracing::error!(%command, %error, "signal admin command failed");
                    }
                    Err(panic) => tasks::report_panic("admin_signal_command", &panic),
                }
            }
        });
    }

    /// Stops the server, with an error (`run` returns it, and the binary exits with status
    /// 1), if the Writer thread dies: every write would fail from then on, and only a new
    /// start rebuilds what it held (see `storage::writer`).
    fn stop_if_the_writer_dies(&self) {
        let writer = self.services.storage.writer().clone();
        let shutdown = self.services.shutdown.clone();
        let failure = Arc::clone(&self.failure);
        tokio::spawn(async move {
            tokio::select! {
                reason = writer.failed() => {
                    tracing::error!(
                        %reason,
                        "no write can succeed any more; stopping the server so that it restarts"
                    );
                    if let Ok(mut slot) = failure.lock() {
                        slot.get_or_insert(reason);
                    }
                    shutdown.trigger();
                }
                () = shutdown.clone().wait() => {}
            }
        });
    }

    /// Runs `admin_execute` once the listeners are up.
    fn run_startup_commands(&self) {
        let commands = self.services.config.admin_execute.clone();
        if commands.is_empty() {
            return;
        }
        let services = Arc::clone(&self.services);
        let failure = Arc::clone(&self.failure);
        tasks::spawn("admin_startup_command", async move {
            for command in commands {
                // A command that panics failed, like one that returned an error.
                let outcome =
                    contained(admin::execute(&services, &command)).await.unwrap_or_else(|panic| {
                        tasks::report_panic("admin_startup_command", &panic);
                        Err(Error::internal(format!("it panicked: {panic}")))
                    });
                match outcome {
                    Ok(output) => tracing::info!(%command, "{output}"),
                    Err(error) if services.config.admin_execute_errors_ignore => {
                        tracing::warn!(%command, %error, "startup admin command failed; continuing");
                    }
                    Err(error) => {
                        tracing::error!(%command, %error, "startup admin command failed; stopping");
                        if let Ok(mut slot) = failure.lock() {
                            *slot = Some(format!("admin command `{command}` failed: {error}"));
                        }
                        services.shutdown.trigger();
                        return;
                    }
                }
            }
        });
    }

    /// Every [`MEMORY_TRIM`], returns the heap's free pages to the system if actors
    /// passivated meanwhile (see `memory::trim_after_passivations`), and once per quiet
    /// spell of [`IDLE_FLUSH_AFTER`] flushes the memtables (see [`IdleFlush`]).
    fn trim_memory_periodically(&self) {
        let services = Arc::downgrade(&self.services);
        let shutdown = self.services.shutdown.clone();
        tasks::supervise("memory_trim", move || {
            Self::trim_memory(services.clone(), shutdown.clone())
        });
    }

    /// The loop of [`Server::trim_memory_periodically`], until shutdown.
    async fn trim_memory(services: Weak<Services>, shutdown: Shutdown) {
        let Some(groups) =
            services.upgrade().map(|services| services.storage.writer().stats().groups)
        else {
            return;
        };
        let mut ticker = tokio::time::interval(MEMORY_TRIM);
        ticker.tick().await;
        let mut idle_flush = IdleFlush::new(groups);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = shutdown.clone().wait() => return,
            }
            let Some(services) = services.upgrade() else { return };
            let groups = services.storage.writer().stats().groups;
            let memtables = services.storage.engine().memory().memtables;
            if idle_flush.due(groups, memtables, Instant::now()) {
                let storage = Arc::clone(&services.storage);
                let flushed = tokio::task::spawn_blocking(move || storage.engine().flush()).await;
                match flushed {
                    Ok(Ok(())) => {
                        metrics::counter!("tuwunel_database_idle_flushes_total").increment(1);
                        crate::memory::note_memory_freed();
                    }
                    Ok(Err(error)) => tracing::warn!(%error, "idle memtable flush failed"),
                    Err(error) => tasks::report_join_error("memory_trim", error),
                }
            }
            drop(services);
            if let Err(error) =
                tokio::task::spawn_blocking(crate::memory::trim_after_passivations).await
            {
                tasks::report_join_error("memory_trim", error);
            }
        }
    }

    /// Persists device activity (last seen IP and time) every minute instead of on every
    /// request, and hourly discards originals of redactions older than
    /// `redaction_retention_seconds` and notifications older than
    /// `notification_retention_seconds`.
    fn flush_activity_periodically(&self) {
        let services = Arc::downgrade(&self.services);
        let shutdown = self.services.shutdown.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(ACTIVITY_FLUSH);
            ticker.tick().await;
            let mut ticks: u64 = 0;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = shutdown.clone().wait() => return,
                }
                let Some(services) = services.upgrade() else { return };
                ticks += 1;
                // In a task of its own: a panic in one round is reported and the next round
                // still runs, where a panic in this loop would end it for good, silently.
                let _ = tasks::spawn("housekeeping", housekeeping(services, ticks)).await;
            }
        });
    }

    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// Bound TCP addresses.
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.listeners.addresses
    }

    /// Those of [`Self::addresses`] that speak TLS.
    pub fn tls_addresses(&self) -> &[SocketAddr] {
        &self.listeners.tls_addresses
    }

    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.listeners.metrics_address
    }

    pub fn unix_socket(&self) -> Option<&PathBuf> {
        self.listeners.unix_socket.as_ref()
    }

    pub fn shutdown_handle(&self) -> Shutdown {
        self.services.shutdown.clone()
    }

    /// Serves until shutdown is triggered (by a signal, an admin command or the caller), then
    /// stops cleanly. An error means a startup admin command failed.
    pub async fn run(self) -> Result<()> {
        self.services.shutdown.clone().wait().await;
        self.stop().await
    }

    /// Stops the server and closes the database.
    pub async fn stop(self) -> Result<()> {
        let Self { services, listeners, failure } = self;
        services.shutdown.trigger();
        tracing::info!("shutting down: finishing in-flight requests");
        // One deadline for all listeners together, so the total stays bounded.
        let aborts: Vec<_> =
            listeners.tasks.iter().map(tokio::task::JoinHandle::abort_handle).collect();
        // `client_shutdown_timeout`: how long requests in flight get to finish.
        let drain = Duration::from_secs(services.config.client_shutdown_timeout);
        let drained = tokio::time::timeout(drain, async {
            for task in listeners.tasks {
                let _ = task.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("in-flight requests did not finish in time; closing their connections");
            for abort in aborts {
                abort.abort();
            }
        }
        tracing::info!("shutting down: draining actors");
        if let Err(error) = services.accounts.flush_last_seen().await {
            tracing::warn!(%error, "saving device activity failed");
        }
        services.rooms.actors.shutdown(DRAIN_ACTORS).await;
        services.presence.actors.shutdown(DRAIN_ACTORS).await;
        // What a destination did not send in time stays queued (or in flight) for the next
        // start.
        let sending =
            Duration::from_secs(services.config.sender_shutdown_timeout.saturating_add(1));
        services.federation.sender.shutdown(sending).await;
        services.push.pushers.shutdown(DRAIN_ACTORS).await;
        services.accounts.users.shutdown(DRAIN_ACTORS).await;
        services.actors.shutdown(DRAIN_ACTORS).await;
        tracing::info!("shutting down: committing queued writes and flushing the database");
        services.storage.close().await;
        let storage = Arc::clone(&services.storage);
        drop(services);
        // Tasks that still hold the services (a request cut off above) let go shortly; the
        // database closes when the last handle is dropped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&storage) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(storage);
        tracing::info!("stopped");
        match failure.lock().ok().and_then(|mut slot| slot.take()) {
            Some(reason) => Err(Error::internal(reason)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memtables_are_flushed_once_per_quiet_spell_and_only_when_worth_it() {
        let start = Instant::now();
        let big = IDLE_FLUSH_MIN_BYTES;
        let mut idle = IdleFlush { groups: 5, since: start, flushed_at: None };
        assert!(!idle.due(5, big, start + IDLE_FLUSH_AFTER / 2), "not quiet long enough");
        assert!(!idle.due(5, big - 1, start + IDLE_FLUSH_AFTER), "too little to flush");
        assert!(idle.due(5, big, start + IDLE_FLUSH_AFTER));
        assert!(!idle.due(5, big, start + IDLE_FLUSH_AFTER * 3), "already flushed this spell");

        // A commit starts a new spell, which must be quiet for the whole span again.
        let commit = start + IDLE_FLUSH_AFTER * 4;
        assert!(!idle.due(6, big, commit));
        assert!(!idle.due(6, big, commit + IDLE_FLUSH_AFTER / 2));
        assert!(idle.due(6, big, commit + IDLE_FLUSH_AFTER));
    }
}
