//! The media repository: uploads, downloads, thumbnails and URL previews.
//!
//! Bytes live on the filesystem ([`store`]), descriptions in RocksDB (`storage::media`),
//! written only by each owner's actor ([`owner`]). Reads go straight to the database and the
//! files. Thumbnails ([`thumbnail`]) are made once on the blocking pool and cached; previews
//! ([`preview`]) fetch pages through the address checks of [`crate::net::ssrf`].
//!
//! Media of other servers comes through a [`RemoteMedia`] source (federation's, see
//! `federation::media`): fetched on a client's first request, kept in the store like an
//! upload (owned by its server, with the content type and file name its server gave), and
//! served from there afterwards. Until a source is set, [`NotFederating`] answers
//! `404 M_NOT_FOUND` at once, so clients never hang on it.

pub mod html;
pub mod owner;
pub mod preview;
pub mod retention;
pub mod store;
pub mod thumbnail;

use std::{
    future::Future,
    ops::ControlFlow,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use regex::Regex;
use ruma::{OwnedMxcUri, ServerName, UserId, api::error::ErrorKind};
use serde_json::{Map, Value};
use tokio::sync::{Notify, Semaphore};

use self::{
    owner::{Described, OwnerActor, OwnerMessage},
    preview::Previewer,
    store::{MediaStore, StagedFile, Staging},
    thumbnail::{Budget, Method, Outcome},
};
use crate::{
    Config, Error, Result,
    actors::{ActorSystem, Limits, Registry, contain::contained_sync},
    federation::flight::SingleFlight,
    net::ssrf::IpDenylist,
    storage::{
        Direction, Storage,
        codec::{Json, Prefix},
        media::{
            BY_OWNER_TABLE, MEDIA_TABLE, MediaRecord, THUMBNAILS_TABLE, ThumbnailRecord,
            USAGE_TABLE, UsageRecord,
        },
    },
    time::Time,
};

/// Longest a download waits for a pending upload, whatever `timeout_ms` asks (the spec
/// wants a maximum; its default wait is 20 s).
pub const MAX_DOWNLOAD_WAIT: Duration = Duration::from_secs(60);
/// Longest content type and file name kept with media (uploads are refused beyond it,
/// other servers' descriptions dropped).
pub const MAX_DESCRIPTION: usize = 255;
/// How long an owner's actor may take to answer (it renames a file and commits a batch).
const OWNER_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A boxed future, for the object-safe [`RemoteMedia`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where media of other servers comes from.
pub trait RemoteMedia: Send + Sync {
    /// Streams the bytes of `mxc://server_name/media_id` from its origin into `into`
    /// (whose size limit is this server's), letting the origin wait up to `wait` for an
    /// upload it has not received yet; returns what the origin says the media is.
    fn fetch<'a>(
        &'a self,
        server_name: &'a ServerName,
        media_id: &'a str,
        wait: Duration,
        into: &'a mut Staging,
    ) -> BoxFuture<'a, Result<Described>>;
}

/// The remote source while this server does not federate: nothing is available.
pub struct NotFederating;

impl RemoteMedia for NotFederating {
    fn fetch<'a>(
        &'a self,
        _server_name: &'a ServerName,
        _media_id: &'a str,
        _wait: Duration,
        _into: &'a mut Staging,
    ) -> BoxFuture<'a, Result<Described>> {
        Box::pin(async {
            Err(Error::not_found(
                "Media of other servers is not available: this server does not federate.",
            ))
        })
    }
}

/// Downloads waiting for a pending upload, woken when it lands.
#[derive(Default)]
pub struct UploadWaiters {
    waiting: DashMap<(String, String), Arc<Notify>>,
}

impl UploadWaiters {
    fn watch(&self, key: &(String, String)) -> Watch<'_> {
        let notify = Arc::clone(self.waiting.entry(key.clone()).or_default().value());
        Watch { waiters: self, key: key.clone(), notify }
    }

    /// Wakes everyone waiting for `key`.
    pub fn uploaded(&self, key: &(String, String)) {
        if let Some(notify) = self.waiting.get(key) {
            notify.notify_waiters();
        }
    }
}

/// One download's registration; the last one out removes the entry.
struct Watch<'a> {
    waiters: &'a UploadWaiters,
    key: (String, String),
    notify: Arc<Notify>,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        // The map's reference and ours: nobody else is waiting. Checked under the shard
        // lock `watch` also takes, so no registration can slip in between.
        self.waiters.waiting.remove_if(&self.key, |_, notify| {
            Arc::ptr_eq(notify, &self.notify) && Arc::strong_count(notify) <= 2
        });
    }
}

/// A file to serve.
pub struct Served {
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub file: tokio::fs::File,
    pub length: u64,
}

/// The media service handlers use.
pub struct Media {
    server_name: String,
    server_user: String,
    pub(crate) storage: Arc<Storage>,
    pub(crate) store: MediaStore,
    owners: Registry<OwnerActor>,
    waiters: Arc<UploadWaiters>,
    previews: Previewer,
    remote: Arc<dyn RemoteMedia>,
    /// Remote media being fetched, so concurrent downloads share one fetch.
    fetching: SingleFlight<(String, String), Result<()>>,
    blocked_servers: Vec<Regex>,
    budget: Budget,
    /// Thumbnails decoded at once: each may hold `media_thumbnail_max_pixels` in memory.
    thumbnailing: Semaphore,
    max_upload: u64,
    pub allow_legacy: bool,
    /// Makes the next thumbnail's decoding panic ([`Media::inject_decoder_panic`]).
    decoder_panic: Arc<AtomicBool>,
    /// What pending uploads and cached previews expire by.
    time: Time,
    retention: retention::Retention,
    quota: Option<u64>,
}

impl Media {
    pub async fn start(
        config: &Config,
        storage: Arc<Storage>,
        actors: &ActorSystem,
        time: Time,
    ) -> Result<Self> {
        let database = config.database_path.clone();
        let store = store::blocking(move || MediaStore::open(&database)).await?;
        let waiters = Arc::new(UploadWaiters::default());
        let server_name = config.server_name.to_string();
        let limits = Limits {
            idle_timeout: Duration::from_secs(config.actor_idle_timeout_s.max(1)),
            mailbox_limit: config.actor_mailbox_limit.max(1),
        };
        let owners = actors
            .registry(
                OwnerActor {
                    storage: Arc::clone(&storage),
                    store: store.clone(),
                    waiters: Arc::clone(&waiters),
                    server_name: server_name.clone(),
                    max_pending: config.max_pending_media_uploads,
                    pending_lifetime: Duration::from_secs(config.pending_media_upload_expiration_s),
                    time: time.clone(),
                    quota: config.media_quota_per_user.map(|quota| quota.0),
                    server_user: format!("@{}:{server_name}", config.server_user_localpart),
                    admin_contact: admin_contact(config),
                },
                limits,
            )
            .await?;
        let denylist = IpDenylist::parse(&config.ip_range_denylist).map_err(Error::internal)?;
        let blocked_servers = config
            .prevent_media_downloads_from
            .iter()
            .map(|pattern| Regex::new(pattern))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| Error::internal(format!("prevent_media_downloads_from: {error}")))?;
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Ok(Self {
            server_user: format!("@{}:{server_name}", config.server_user_localpart),
            server_name,
            storage,
            store,
            owners,
            waiters,
            previews: Previewer::new(config, Arc::new(denylist))?,
            remote: Arc::new(NotFederating),
            fetching: SingleFlight::default(),
            blocked_servers,
            budget: Budget {
                max_pixels: config.media_thumbnail_max_pixels,
                max_frames: config.media_thumbnail_max_frames.max(1),
            },
            thumbnailing: Semaphore::new(cores),
            max_upload: config.max_request_size.0,
            allow_legacy: config.allow_legacy_media,
            decoder_panic: Arc::default(),
            time,
            retention: retention::Retention {
                local_days: config.media_retention_local_days,
                remote_days: config.media_retention_remote_days,
            },
            quota: config.media_quota_per_user.map(|quota| quota.0),
        })
    }

    /// `media_quota_per_user`, in bytes.
    pub fn quota(&self) -> Option<u64> {
        self.quota
    }

    /// Records that `record` was downloaded today, unless that is already recorded: at
    /// most one write per media item and day (`retention`).
    async fn record_download(&self, server_name: &str, media_id: &str, record: &MediaRecord) {
        let today = retention::day_of(self.time.now_ms());
        let recorded = record.accessed_day.unwrap_or(retention::day_of(record.created_ms));
        if recorded >= today {
            return;
        }
        let message = OwnerMessage::Touch {
            server_name: server_name.to_owned(),
            media_id: media_id.to_owned(),
            day: today,
        };
        if let Err(error) = self.owners.send(&record.owner, message).await {
            tracing::debug!(%error, "could not record a media download");
        }
    }

    /// Replaces the source of remote media (federation's, at startup).
    pub fn set_remote(&mut self, remote: Arc<dyn RemoteMedia>) {
        self.remote = remote;
    }

    /// Makes the image decoding of the next thumbnail generated panic, as a decoder that
    /// meets a file it mishandles would: for tests of the containment. (Fuzzing the decoders
    /// with mutated and crafted PNG, JPEG, baseline and progressive, GIF and WebP files found
    /// no input that makes them panic; this stands in for the one that may exist.)
    pub fn inject_decoder_panic(&self) {
        self.decoder_panic.store(true, Ordering::SeqCst);
    }

    /// The largest upload accepted (`max_request_size`).
    pub fn max_upload_size(&self) -> u64 {
        self.max_upload
    }

    fn mxc(&self, media_id: &str) -> OwnedMxcUri {
        OwnedMxcUri::from(format!("mxc://{}/{media_id}", self.server_name))
    }

    /// Starts receiving an upload into a staging file limited to the upload size.
    pub async fn stage_upload(&self) -> Result<Staging> {
        self.store.stage(self.max_upload).await
    }

    async fn call_owner<R: Send + 'static>(
        &self,
        owner: &str,
        build: impl FnOnce(crate::actors::Reply<Result<R>>) -> OwnerMessage,
    ) -> Result<R> {
        self.owners.call(&owner.to_owned(), build, OWNER_CALL_TIMEOUT).await?
    }

    /// Keeps an upload as new media of `owner`.
    pub async fn create(
        &self,
        owner: &UserId,
        file: StagedFile,
        described: Described,
    ) -> Result<OwnedMxcUri> {
        let media_id = self
            .call_owner(owner.as_str(), |reply| OwnerMessage::Create { file, described, reply })
            .await?;
        Ok(self.mxc(&media_id))
    }

    /// Keeps a file the server fetched itself (a preview image), owned by the server user.
    pub(crate) async fn create_as_server(
        &self,
        file: StagedFile,
        described: Described,
    ) -> Result<OwnedMxcUri> {
        let media_id = self
            .call_owner(&self.server_user, |reply| OwnerMessage::Create { file, described, reply })
            .await?;
        Ok(self.mxc(&media_id))
    }

    /// Mints a media id for a later upload; returns it with its expiry (ms).
    pub async fn reserve(&self, owner: &UserId) -> Result<(OwnedMxcUri, u64)> {
        let (media_id, until) =
            self.call_owner(owner.as_str(), |reply| OwnerMessage::Reserve { reply }).await?;
        Ok((self.mxc(&media_id), until))
    }

    /// Checks, before any byte is received, that `owner` may upload to a reserved id.
    pub fn check_fillable(
        &self,
        owner: &UserId,
        server_name: &ServerName,
        media_id: &str,
    ) -> Result<()> {
        if server_name.as_str() != self.server_name || !valid_media_id(media_id) {
            return Err(owner::unknown_reservation());
        }
        match self.stored(server_name.as_str(), media_id)? {
            None => Err(owner::unknown_reservation()),
            Some(record) if record.owner != owner.as_str() => Err(owner::not_the_uploader()),
            Some(record) if !record.is_pending() => Err(owner::already_uploaded()),
            Some(record) if !record.pending_alive(self.time.now_ms()) => {
                Err(owner::unknown_reservation())
            }
            Some(_) => Ok(()),
        }
    }

    /// Keeps an upload as the content of a reserved id.
    pub async fn fill(
        &self,
        owner: &UserId,
        media_id: &str,
        file: StagedFile,
        described: Described,
    ) -> Result<()> {
        let media_id = media_id.to_owned();
        self.call_owner(owner.as_str(), |reply| OwnerMessage::Fill {
            media_id,
            file,
            described,
            reply,
        })
        .await
    }

    /// The stored description of a media item, pending or not.
    pub fn stored(&self, server_name: &str, media_id: &str) -> Result<Option<MediaRecord>> {
        Ok(MEDIA_TABLE
            .get(self.storage.engine(), &(server_name.to_owned(), media_id.to_owned()))?
            .map(|Json(record)| record))
    }

    /// Whether `prevent_media_downloads_from` names the server; the patterns see its host
    /// without the port, like the other server name lists.
    fn is_blocked(&self, server_name: &ServerName) -> bool {
        self.blocked_servers.iter().any(|pattern| pattern.is_match(server_name.host()))
    }

    /// The record of uploaded media, waiting up to `timeout` for a pending upload; remote
    /// media goes through the remote source.
    async fn ready(
        &self,
        server_name: &ServerName,
        media_id: &str,
        timeout: Duration,
    ) -> Result<MediaRecord> {
        if !valid_media_id(media_id) {
            return Err(no_such_media());
        }
        if server_name.as_str() != self.server_name {
            if self.is_blocked(server_name) {
                return Err(Error::not_found("This server does not serve media from that server."));
            }
            if let Some(record) =
                self.stored(server_name.as_str(), media_id)?.filter(|r| !r.is_pending())
            {
                return Ok(record);
            }
            self.fetch_remote(server_name, media_id, timeout.min(MAX_DOWNLOAD_WAIT)).await?;
            return self
                .stored(server_name.as_str(), media_id)?
                .filter(|record| !record.is_pending())
                .ok_or_else(no_such_media);
        }
        match self.stored(server_name.as_str(), media_id)? {
            None => Err(no_such_media()),
            Some(record) if !record.is_pending() => Ok(record),
            Some(record) => self.wait_for_upload(media_id, &record, timeout).await,
        }
    }

    /// Fetches remote media into the store, once however many clients ask at the same time.
    async fn fetch_remote(
        &self,
        server_name: &ServerName,
        media_id: &str,
        wait: Duration,
    ) -> Result<()> {
        let key = (server_name.to_string(), media_id.to_owned());
        self.fetching.run(&key, || self.fetch_into_store(server_name, media_id, wait)).await
    }

    async fn fetch_into_store(
        &self,
        server_name: &ServerName,
        media_id: &str,
        wait: Duration,
    ) -> Result<()> {
        let outcome = |outcome: &'static str| {
            metrics::counter!("tuwunel_media_remote_fetches_total", "outcome" => outcome)
                .increment(1);
        };
        // A flight that ended just before this one started may have kept it already.
        if self.stored(server_name.as_str(), media_id)?.is_some_and(|record| !record.is_pending()) {
            return Ok(());
        }
        let mut staging = self.store.stage(self.max_upload).await?;
        let described = match self.remote.fetch(server_name, media_id, wait, &mut staging).await {
            Ok(described) => sanitised(described),
            Err(error) if error.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                outcome("too_large");
                return Err(Error::matrix(
                    axum::http::StatusCode::BAD_GATEWAY,
                    ErrorKind::TooLarge,
                    format!(
                        "The remote content is larger than this server's limit of {} bytes.",
                        self.max_upload
                    ),
                ));
            }
            Err(error) => {
                outcome("failed");
                return Err(error);
            }
        };
        let file = staging.finish().await?;
        let size = file.size;
        let (server, id) = (server_name.to_string(), media_id.to_owned());
        self.call_owner(server_name.as_str(), |reply| OwnerMessage::Cache {
            server_name: server,
            media_id: id,
            file,
            described,
            reply,
        })
        .await?;
        outcome("fetched");
        metrics::counter!("tuwunel_media_remote_fetch_bytes_total").increment(size);
        tracing::debug!(%server_name, %media_id, size, "fetched remote media");
        Ok(())
    }

    async fn wait_for_upload(
        &self,
        media_id: &str,
        pending: &MediaRecord,
        timeout: Duration,
    ) -> Result<MediaRecord> {
        let now = self.time.now_ms();
        let Some(until) = pending.pending_until_ms.filter(|until| now < *until) else {
            return Err(no_such_media());
        };
        let key = (self.server_name.clone(), media_id.to_owned());
        // Register, then look again: an upload landing in between still wakes this wait.
        let watch = self.waiters.watch(&key);
        let notified = watch.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let wait = timeout.min(MAX_DOWNLOAD_WAIT).min(Duration::from_millis(until - now));
        if self.stored(&key.0, &key.1)?.is_some_and(|record| record.is_pending()) {
            let _ = tokio::time::timeout(wait, notified).await;
        }
        match self.stored(&key.0, &key.1)? {
            Some(record) if !record.is_pending() => Ok(record),
            Some(record) if record.pending_alive(self.time.now_ms()) => Err(Error::matrix(
                axum::http::StatusCode::GATEWAY_TIMEOUT,
                ErrorKind::NotYetUploaded,
                "The content has not been uploaded yet; try again later.",
            )),
            _ => Err(no_such_media()),
        }
    }

    /// The content of `mxc://server_name/media_id`, ready to stream.
    pub async fn content(
        &self,
        server_name: &ServerName,
        media_id: &str,
        timeout: Duration,
    ) -> Result<Served> {
        let record = self.ready(server_name, media_id, timeout).await?;
        let name = MediaStore::content_name(server_name.as_str(), media_id);
        let Some((file, length)) = self.store.open_file(&name).await? else {
            tracing::error!(%server_name, %media_id, "a media file is missing from the media directory");
            return Err(no_such_media());
        };
        metrics::counter!("tuwunel_media_downloads_total").increment(1);
        metrics::counter!("tuwunel_media_download_bytes_total").increment(length);
        self.record_download(server_name.as_str(), media_id, &record).await;
        Ok(Served { content_type: record.content_type, filename: record.filename, file, length })
    }

    /// A thumbnail of `mxc://server_name/media_id` at least `width`x`height`, made once and
    /// cached.
    #[allow(clippy::too_many_arguments)]
    pub async fn thumbnail(
        &self,
        server_name: &ServerName,
        media_id: &str,
        width: u32,
        height: u32,
        method: Method,
        animated: bool,
        timeout: Duration,
    ) -> Result<Served> {
        if width == 0 || height == 0 {
            return Err(Error::invalid_param("Thumbnail width and height must be positive."));
        }
        let record = self.ready(server_name, media_id, timeout).await?;
        self.record_download(server_name.as_str(), media_id, &record).await;
        let request =
            thumbnail::Request { size: thumbnail::choose(width, height, method), animated };
        let key = (server_name.to_string(), media_id.to_owned(), request.key());
        if let Some(served) = self.cached_thumbnail(&key).await? {
            return Ok(served);
        }
        let _permit = self
            .thumbnailing
            .acquire()
            .await
            .map_err(|_| Error::internal("the thumbnail semaphore was closed"))?;
        // Another request may have made it while this one waited.
        if let Some(served) = self.cached_thumbnail(&key).await? {
            return Ok(served);
        }
        let source = self.store.path_of(&MediaStore::content_name(&key.0, &key.1));
        let budget = self.budget;
        let injected_panic = self.decoder_panic.swap(false, Ordering::SeqCst);
        // The image decoders read whatever was uploaded: a panic in one is that file's
        // problem, answered like any image they cannot read, not a 500.
        let outcome = store::blocking(move || {
            contained_sync(|| {
                assert!(!injected_panic, "a panic injected into the image decoder");
                thumbnail::generate(&source, &request, &budget)
            })
            .unwrap_or_else(|panic| {
                tracing::warn!(%panic, "an image decoder panicked while thumbnailing");
                Err(thumbnail::unreadable())
            })
        })
        .await?;
        let (file, thumbnail) = match outcome {
            Outcome::Original { content_type, width, height } => (
                None,
                ThumbnailRecord {
                    content_type: content_type.to_owned(),
                    size: record.size,
                    width,
                    height,
                    original: true,
                },
            ),
            Outcome::Generated { bytes, content_type, width, height } => {
                let mut staging = self.store.stage(bytes.len() as u64).await?;
                staging.write(&bytes).await?;
                (
                    Some(staging.finish().await?),
                    ThumbnailRecord {
                        content_type: content_type.to_owned(),
                        size: bytes.len() as u64,
                        width,
                        height,
                        original: false,
                    },
                )
            }
        };
        let (server, id, thumbnail_key) = key.clone();
        self.call_owner(&record.owner, |reply| OwnerMessage::Thumbnail {
            server_name: server,
            media_id: id,
            key: thumbnail_key,
            file,
            record: thumbnail,
            reply,
        })
        .await?;
        self.cached_thumbnail(&key).await?.ok_or_else(no_such_media)
    }

    async fn cached_thumbnail(&self, key: &(String, String, String)) -> Result<Option<Served>> {
        let Some(Json(thumbnail)) = THUMBNAILS_TABLE.get(self.storage.engine(), key)? else {
            return Ok(None);
        };
        let name = if thumbnail.original {
            MediaStore::content_name(&key.0, &key.1)
        } else {
            MediaStore::thumbnail_name(&key.0, &key.1, &key.2)
        };
        // A missing file (deleted by hand) is made again.
        let Some((file, length)) = self.store.open_file(&name).await? else {
            return Ok(None);
        };
        let extension = thumbnail.content_type.strip_prefix("image/").unwrap_or("bin").to_owned();
        Ok(Some(Served {
            content_type: Some(thumbnail.content_type),
            filename: Some(format!("thumbnail.{extension}")),
            file,
            length,
        }))
    }

    /// The OpenGraph preview of `url`.
    pub async fn preview(&self, url: &str) -> Result<Map<String, Value>> {
        self.previews.preview(self, url).await
    }

    /// Stored bytes and files per owner, largest first.
    pub fn usage(&self) -> Result<Vec<(String, UsageRecord)>> {
        let mut owners = Vec::new();
        USAGE_TABLE.scan(
            self.storage.engine(),
            &Prefix::all(),
            None,
            Direction::Forward,
            |owner, Json(usage)| {
                if usage.files > 0 {
                    owners.push((owner, usage));
                }
                ControlFlow::Continue(())
            },
        )?;
        owners.sort_by(|a, b| b.1.bytes.cmp(&a.1.bytes).then_with(|| a.0.cmp(&b.0)));
        Ok(owners)
    }

    /// The media `owner` stored, as `(server name, media id)`.
    pub fn owned_by(&self, owner: &str) -> Result<Vec<(String, String)>> {
        let mut owned = Vec::new();
        BY_OWNER_TABLE.scan(
            self.storage.engine(),
            &Prefix::of(owner),
            None,
            Direction::Forward,
            |(_, server_name, media_id), ()| {
                owned.push((server_name, media_id));
                ControlFlow::Continue(())
            },
        )?;
        Ok(owned)
    }

    /// Deletes a media item, its file and its thumbnails; returns what was deleted.
    pub async fn delete(&self, server_name: &str, media_id: &str) -> Result<Option<MediaRecord>> {
        let Some(record) = self.stored(server_name, media_id)? else {
            return Ok(None);
        };
        let (server_name, media_id) = (server_name.to_owned(), media_id.to_owned());
        self.call_owner(&record.owner, |reply| OwnerMessage::Delete {
            server_name,
            media_id,
            reply,
        })
        .await
    }
}

/// Media ids are `[A-Za-z0-9_-]+` (the spec's rule against path tricks).
pub fn valid_media_id(media_id: &str) -> bool {
    !media_id.is_empty()
        && media_id.len() <= 255
        && media_id.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-'))
}

/// What another server said about its media, within the bounds uploads have: a content
/// type that is a valid header value and short, a short file name.
fn sanitised(described: Described) -> Described {
    let content_type = described.content_type.filter(|value| {
        value.len() <= MAX_DESCRIPTION && axum::http::HeaderValue::from_str(value).is_ok()
    });
    let filename = described
        .filename
        .filter(|name| name.chars().count() <= MAX_DESCRIPTION && !name.is_empty());
    Described { content_type, filename }
}

/// The `admin_contact` of a quota error: the `well_known` support page, email or Matrix
/// ID, else the admin room's alias.
fn admin_contact(config: &Config) -> String {
    let well_known = &config.well_known;
    if let Some(page) = &well_known.support_page {
        return page.clone();
    }
    if let Some(email) = &well_known.support_email {
        return format!("mailto:{email}");
    }
    if let Some(mxid) = &well_known.support_mxid {
        return format!("https://matrix.to/#/{mxid}");
    }
    format!("https://matrix.to/#/%23admins:{}", config.server_name)
}

fn no_such_media() -> Error {
    Error::not_found("No media with that ID exists here.")
}

#[cfg(test)]
mod tests {
    use super::valid_media_id;

    #[test]
    fn media_ids_are_sanitised() {
        assert!(valid_media_id("AbC_09-x"));
        for bad in ["", "..", "a/b", "a%2Fb", "é", "a b", &"x".repeat(256)] {
            assert!(!valid_media_id(bad), "{bad:?}");
        }
    }
}
