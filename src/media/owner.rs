//! The media owner actor: one per user who stores media (and the server user, who owns
//! preview images, and each remote server whose media is cached here, keyed by its name),
//! the only writer of that owner's media rows, pending uploads and usage.
//!
//! Serialising an owner's changes here is what makes the usage counter exact without a lock
//! (every change reads and writes it in order), what makes "exactly one of two concurrent
//! uploads to a `/create`d id wins, the other gets `M_CANNOT_OVERWRITE_MEDIA`" true, and
//! what keeps a thumbnail from being cached for media that is being deleted. Files are put
//! in place before the rows that make them reachable are committed, and removed after the
//! rows that pointed at them are gone.

use std::{collections::BTreeMap, ops::ControlFlow, sync::Arc, time::Duration};

use rand::{Rng, distributions::Alphanumeric};
use ruma::api::error::{ErrorKind, ResourceLimitExceededErrorData};

use super::{
    UploadWaiters,
    retention::Retention,
    store::{MediaStore, StagedFile},
};
use crate::{
    Error, Result,
    actors::{Behaviour, Context, Reply},
    storage::{
        Batch, Direction, Storage,
        codec::{Json, Prefix},
        media::{
            BY_OWNER_TABLE, MEDIA_TABLE, MediaRecord, PENDING_TABLE, THUMBNAILS_TABLE,
            ThumbnailRecord, USAGE_TABLE, UsageRecord,
        },
    },
    time::Time,
};

/// Length of the media ids this server mints.
const MEDIA_ID_LENGTH: usize = 24;

/// What to describe a new file with.
#[derive(Debug, Clone, Default)]
pub struct Described {
    pub content_type: Option<String>,
    pub filename: Option<String>,
}

pub enum OwnerMessage {
    /// Mints a media id to upload to later (`/create`); replies with it and its expiry.
    Reserve { reply: Reply<Result<(String, u64)>> },
    /// Keeps a staged file as new media with a fresh id; replies with the id.
    Create { file: StagedFile, described: Described, reply: Reply<Result<String>> },
    /// Keeps a staged file as the content of a reserved id.
    Fill { media_id: String, file: StagedFile, described: Described, reply: Reply<Result<()>> },
    /// Keeps a staged file fetched from another server as its media `server_name/media_id`
    /// (the owner is that server); media already kept is left as it is.
    Cache {
        server_name: String,
        media_id: String,
        file: StagedFile,
        described: Described,
        reply: Reply<Result<()>>,
    },
    /// Caches a thumbnail of one of the owner's media (`file` is `None` when the record
    /// points at the original).
    Thumbnail {
        server_name: String,
        media_id: String,
        key: String,
        file: Option<StagedFile>,
        record: ThumbnailRecord,
        reply: Reply<Result<()>>,
    },
    /// Deletes one of the owner's media with its thumbnails; replies with what was deleted.
    Delete { server_name: String, media_id: String, reply: Reply<Result<Option<MediaRecord>>> },
    /// Records that one of the owner's media was downloaded on `day` (for retention).
    Touch { server_name: String, media_id: String, day: u64 },
    /// Deletes one of the owner's media if `retention` still finds it unused at `now_ms`.
    Expire {
        server_name: String,
        media_id: String,
        retention: Retention,
        now_ms: u64,
        reply: Reply<Result<Option<MediaRecord>>>,
    },
}

/// What the actor remembers between messages.
pub struct OwnerState {
    /// Reserved ids not uploaded to yet, with their expiry.
    pending: BTreeMap<String, u64>,
    usage: UsageRecord,
}

pub struct OwnerActor {
    pub(super) storage: Arc<Storage>,
    pub(super) store: MediaStore,
    pub(super) waiters: Arc<UploadWaiters>,
    pub(super) server_name: String,
    pub(super) max_pending: usize,
    pub(super) pending_lifetime: Duration,
    pub(super) time: Time,
    /// `media_quota_per_user`: bytes a local user may store (not the server user).
    pub(super) quota: Option<u64>,
    pub(super) server_user: String,
    /// Where a user over quota is sent (`admin_contact` of the error).
    pub(super) admin_contact: String,
}

impl Behaviour for OwnerActor {
    type Key = String;
    type Message = OwnerMessage;
    type State = OwnerState;

    const KIND: &'static str = "media";

    async fn start(&self, owner: &String) -> Result<OwnerState> {
        let mut pending = BTreeMap::new();
        PENDING_TABLE.scan(
            self.storage.engine(),
            &Prefix::of(owner.as_str()),
            None,
            Direction::Forward,
            |(_, media_id), until| {
                pending.insert(media_id, until);
                ControlFlow::Continue(())
            },
        )?;
        let usage = USAGE_TABLE.get(self.storage.engine(), owner)?.map(|Json(usage)| usage);
        Ok(OwnerState { pending, usage: usage.unwrap_or_default() })
    }

    async fn handle(
        &self,
        context: &Context<Self>,
        message: OwnerMessage,
        state: &mut OwnerState,
    ) -> Result<()> {
        let owner = &context.key;
        match message {
            OwnerMessage::Reserve { reply } => {
                let _ = reply.send(self.reserve(owner, state).await);
            }
            OwnerMessage::Create { file, described, reply } => {
                let _ = reply.send(self.create(owner, state, file, described).await);
            }
            OwnerMessage::Fill { media_id, file, described, reply } => {
                let _ = reply.send(self.fill(owner, state, media_id, file, described).await);
            }
            OwnerMessage::Cache { server_name, media_id, file, described, reply } => {
                let result = self.cache(owner, state, server_name, media_id, file, described).await;
                let _ = reply.send(result);
            }
            OwnerMessage::Thumbnail { server_name, media_id, key, file, record, reply } => {
                let result = self.thumbnail(owner, server_name, media_id, key, file, record).await;
                let _ = reply.send(result);
            }
            OwnerMessage::Delete { server_name, media_id, reply } => {
                let _ = reply.send(self.delete(owner, state, server_name, media_id).await);
            }
            OwnerMessage::Touch { server_name, media_id, day } => {
                if let Err(error) = self.touch(owner, server_name, media_id, day).await {
                    tracing::warn!(%error, "recording a media download failed");
                }
            }
            OwnerMessage::Expire { server_name, media_id, retention, now_ms, reply } => {
                let result = self
                    .expire_unused(owner, state, server_name, media_id, retention, now_ms)
                    .await;
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}

impl OwnerActor {
    /// A media id nobody has used on this server.
    fn fresh_id(&self) -> Result<String> {
        // 24 alphanumerics are 142 bits: a collision is only conceivable, but cheap to rule out.
        for _ in 0..4 {
            let id: String = rand::thread_rng()
                .sample_iter(&Alphanumeric)
                .take(MEDIA_ID_LENGTH)
                .map(char::from)
                .collect();
            if !MEDIA_TABLE
                .contains(self.storage.engine(), &(self.server_name.clone(), id.clone()))?
            {
                return Ok(id);
            }
        }
        Err(Error::internal("could not mint an unused media id"))
    }

    /// Forgets reserved ids whose time ran out (their rows go with the next commit).
    fn expire(&self, owner: &str, state: &mut OwnerState, batch: &mut Batch, now: u64) {
        let expired: Vec<String> = state
            .pending
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for media_id in expired {
            PENDING_TABLE.delete(batch, &(owner.to_owned(), media_id.clone()));
            MEDIA_TABLE.delete(batch, &(self.server_name.clone(), media_id.clone()));
            state.pending.remove(&media_id);
        }
    }

    async fn reserve(&self, owner: &str, state: &mut OwnerState) -> Result<(String, u64)> {
        let now = self.time.now_ms();
        let mut batch = Batch::new();
        self.expire(owner, state, &mut batch, now);
        if state.pending.len() >= self.max_pending {
            // Commit the expiries anyway; the caller is told when the oldest id lapses.
            self.storage.writer().commit(batch).await?;
            let soonest = state.pending.values().min().copied().unwrap_or(now);
            return Err(Error::limit_exceeded(Duration::from_millis(soonest.saturating_sub(now))));
        }
        let media_id = self.fresh_id()?;
        let lifetime = u64::try_from(self.pending_lifetime.as_millis()).unwrap_or(u64::MAX);
        let until = now.saturating_add(lifetime);
        let record = MediaRecord {
            owner: owner.to_owned(),
            created_ms: now,
            pending_until_ms: Some(until),
            ..MediaRecord::default()
        };
        MEDIA_TABLE.put(&mut batch, &(self.server_name.clone(), media_id.clone()), &Json(record));
        PENDING_TABLE.put(&mut batch, &(owner.to_owned(), media_id.clone()), &until);
        self.storage.writer().commit(batch).await?;
        state.pending.insert(media_id.clone(), until);
        Ok((media_id, until))
    }

    async fn create(
        &self,
        owner: &str,
        state: &mut OwnerState,
        file: StagedFile,
        described: Described,
    ) -> Result<String> {
        self.within_quota(owner, state, file.size)?;
        let media_id = self.fresh_id()?;
        self.keep(owner, state, &self.server_name, &media_id, file, described, Batch::new())
            .await?;
        Ok(media_id)
    }

    async fn fill(
        &self,
        owner: &str,
        state: &mut OwnerState,
        media_id: String,
        file: StagedFile,
        described: Described,
    ) -> Result<()> {
        let key = (self.server_name.clone(), media_id.clone());
        let Some(Json(record)) = MEDIA_TABLE.get(self.storage.engine(), &key)? else {
            return Err(unknown_reservation());
        };
        if record.owner != owner {
            return Err(not_the_uploader());
        }
        if !record.is_pending() {
            return Err(already_uploaded());
        }
        self.within_quota(owner, state, file.size)?;
        let now = self.time.now_ms();
        let mut batch = Batch::new();
        self.expire(owner, state, &mut batch, now);
        if !record.pending_alive(now) {
            self.storage.writer().commit(batch).await?;
            return Err(unknown_reservation());
        }
        PENDING_TABLE.delete(&mut batch, &(owner.to_owned(), media_id.clone()));
        self.keep(owner, state, &self.server_name, &media_id, file, described, batch).await?;
        state.pending.remove(&media_id);
        self.waiters.uploaded(&key);
        Ok(())
    }

    async fn cache(
        &self,
        owner: &str,
        state: &mut OwnerState,
        server_name: String,
        media_id: String,
        file: StagedFile,
        described: Described,
    ) -> Result<()> {
        if server_name == self.server_name || owner != server_name {
            return Err(Error::internal("remote media cached under the wrong owner"));
        }
        let key = (server_name.clone(), media_id.clone());
        if MEDIA_TABLE.contains(self.storage.engine(), &key)? {
            // Fetched again while an earlier fetch was being kept: the first copy stays.
            return Ok(());
        }
        self.keep(owner, state, &server_name, &media_id, file, described, Batch::new()).await
    }

    /// Puts the file in place, then commits its record, index entry and the new usage
    /// together with `batch`.
    #[allow(clippy::too_many_arguments)]
    async fn keep(
        &self,
        owner: &str,
        state: &mut OwnerState,
        server_name: &str,
        media_id: &str,
        file: StagedFile,
        described: Described,
        mut batch: Batch,
    ) -> Result<()> {
        let size = file.size;
        let record = MediaRecord {
            owner: owner.to_owned(),
            content_type: described.content_type,
            filename: described.filename,
            size,
            created_ms: self.time.now_ms(),
            sha256: Some(file.sha256.clone()),
            pending_until_ms: None,
            accessed_day: None,
        };
        let name = MediaStore::content_name(server_name, media_id);
        self.store.persist(file, &name).await?;
        let usage = UsageRecord {
            bytes: state.usage.bytes.saturating_add(size),
            files: state.usage.files.saturating_add(1),
        };
        MEDIA_TABLE.put(&mut batch, &(server_name.to_owned(), media_id.to_owned()), &Json(record));
        BY_OWNER_TABLE.put(
            &mut batch,
            &(owner.to_owned(), server_name.to_owned(), media_id.to_owned()),
            &(),
        );
        USAGE_TABLE.put(&mut batch, &owner.to_owned(), &Json(usage));
        if let Err(error) = self.storage.writer().commit(batch).await {
            // Nothing points at the file: take it away again rather than leave it orphaned.
            let _ = self.store.remove(&name).await;
            return Err(error);
        }
        state.usage = usage;
        if server_name == self.server_name {
            metrics::counter!("tuwunel_media_uploads_total").increment(1);
            metrics::counter!("tuwunel_media_upload_bytes_total").increment(size);
        }
        Ok(())
    }

    /// Refuses an upload of `size` bytes that would take a local user past the quota. The
    /// actor handles one message at a time, so concurrent uploads are counted one after the
    /// other and cannot pass it together.
    fn within_quota(&self, owner: &str, state: &OwnerState, size: u64) -> Result<()> {
        let Some(quota) = self.quota else { return Ok(()) };
        if owner == self.server_user || state.usage.bytes.saturating_add(size) <= quota {
            return Ok(());
        }
        Err(Error::matrix(
            axum::http::StatusCode::FORBIDDEN,
            ErrorKind::ResourceLimitExceeded(ResourceLimitExceededErrorData::new(
                self.admin_contact.clone(),
            )),
            format!(
                "This upload would take your media past your quota of {quota} bytes \
                 ({} bytes stored); delete some media or ask the server's admins.",
                state.usage.bytes
            ),
        ))
    }

    /// Records a download day on the media's record, if later than the one recorded.
    async fn touch(
        &self,
        owner: &str,
        server_name: String,
        media_id: String,
        day: u64,
    ) -> Result<()> {
        let key = (server_name, media_id);
        let Some(Json(mut record)) = MEDIA_TABLE.get(self.storage.engine(), &key)? else {
            return Ok(());
        };
        if record.owner != owner || record.is_pending() || record.accessed_day >= Some(day) {
            return Ok(());
        }
        record.accessed_day = Some(day);
        let mut batch = Batch::new();
        MEDIA_TABLE.put(&mut batch, &key, &Json(record));
        self.storage.writer().commit(batch).await
    }

    /// Deletes media retention found unused, unless a download recorded since says
    /// otherwise.
    async fn expire_unused(
        &self,
        owner: &str,
        state: &mut OwnerState,
        server_name: String,
        media_id: String,
        retention: Retention,
        now_ms: u64,
    ) -> Result<Option<MediaRecord>> {
        let key = (server_name.clone(), media_id.clone());
        let Some(Json(record)) = MEDIA_TABLE.get(self.storage.engine(), &key)? else {
            return Ok(None);
        };
        if !retention.expired(&record, server_name == self.server_name, now_ms) {
            return Ok(None);
        }
        self.delete(owner, state, server_name, media_id).await
    }

    async fn thumbnail(
        &self,
        owner: &str,
        server_name: String,
        media_id: String,
        key: String,
        file: Option<StagedFile>,
        record: ThumbnailRecord,
    ) -> Result<()> {
        let media_key = (server_name.clone(), media_id.clone());
        match MEDIA_TABLE.get(self.storage.engine(), &media_key)? {
            Some(Json(media)) if media.owner == owner && !media.is_pending() => {}
            // Deleted (or replaced) while the thumbnail was being made: do not cache it.
            _ => return Err(Error::not_found("The media was deleted.")),
        }
        if let Some(file) = file {
            let name = MediaStore::thumbnail_name(&server_name, &media_id, &key);
            self.store.persist(file, &name).await?;
        }
        let mut batch = Batch::new();
        THUMBNAILS_TABLE.put(&mut batch, &(server_name, media_id, key), &Json(record));
        self.storage.writer().commit(batch).await?;
        metrics::counter!("tuwunel_media_thumbnails_generated_total").increment(1);
        Ok(())
    }

    async fn delete(
        &self,
        owner: &str,
        state: &mut OwnerState,
        server_name: String,
        media_id: String,
    ) -> Result<Option<MediaRecord>> {
        let key = (server_name.clone(), media_id.clone());
        let Some(Json(record)) = MEDIA_TABLE.get(self.storage.engine(), &key)? else {
            return Ok(None);
        };
        if record.owner != owner {
            return Err(Error::internal("media delete sent to the wrong owner"));
        }
        let mut batch = Batch::new();
        MEDIA_TABLE.delete(&mut batch, &key);
        BY_OWNER_TABLE
            .delete(&mut batch, &(owner.to_owned(), server_name.clone(), media_id.clone()));
        PENDING_TABLE.delete(&mut batch, &(owner.to_owned(), media_id.clone()));
        let mut thumbnails = Vec::new();
        THUMBNAILS_TABLE.scan_keys(
            self.storage.engine(),
            &Prefix::of2(server_name.as_str(), media_id.as_str()),
            None,
            Direction::Forward,
            |(server, id, thumbnail)| {
                thumbnails.push((server, id, thumbnail));
                ControlFlow::Continue(())
            },
        )?;
        for thumbnail in &thumbnails {
            THUMBNAILS_TABLE.delete(&mut batch, thumbnail);
        }
        let usage = if record.is_pending() {
            state.usage
        } else {
            UsageRecord {
                bytes: state.usage.bytes.saturating_sub(record.size),
                files: state.usage.files.saturating_sub(1),
            }
        };
        USAGE_TABLE.put(&mut batch, &owner.to_owned(), &Json(usage));
        self.storage.writer().commit(batch).await?;
        state.usage = usage;
        state.pending.remove(&media_id);
        // The rows are gone; a failure to unlink only leaves an unreachable file behind.
        let content = MediaStore::content_name(&server_name, &media_id);
        if let Err(error) = self.store.remove(&content).await {
            tracing::warn!(%error, %media_id, "could not remove a deleted media file");
        }
        for (server, id, thumbnail) in thumbnails {
            let _ = self.store.remove(&MediaStore::thumbnail_name(&server, &id, &thumbnail)).await;
        }
        Ok(Some(record))
    }
}

pub(super) fn unknown_reservation() -> Error {
    Error::not_found("Unknown media ID: it was not created with /create, or it has expired.")
}

pub(super) fn not_the_uploader() -> Error {
    Error::forbidden("Only the user who created this media ID can upload to it.")
}

pub(super) fn already_uploaded() -> Error {
    Error::matrix(
        axum::http::StatusCode::CONFLICT,
        ErrorKind::CannotOverwriteMedia,
        "Content was already uploaded to this media ID.",
    )
}
