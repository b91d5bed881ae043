//! Media at rest: what is known about each stored file (the bytes themselves live on the
//! filesystem, see `media::store`), cached thumbnails, pending uploads, per-user usage and
//! cached URL previews. Only the owner's media actor writes media rows (see `media::owner`);
//! anyone may read them.

use serde::{Deserialize, Serialize};

use super::{
    catalogue::{
        MEDIA, MEDIA_BY_OWNER, MEDIA_PENDING, MEDIA_THUMBNAILS, MEDIA_USAGE, URL_PREVIEWS,
    },
    codec::Json,
    table::Table,
};

/// One `mxc://` URI's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRecord {
    /// Who uploaded it (a user id; the server user for preview images).
    pub owner: String,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub size: u64,
    pub created_ms: u64,
    /// Hex SHA-256 of the bytes, for integrity checks and future de-duplication.
    pub sha256: Option<String>,
    /// Set while the id was created with `/create` but nothing was uploaded yet: the time
    /// after which the id is void.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_until_ms: Option<u64>,
    /// The last day (since the epoch) it was downloaded on, for retention; recorded at most
    /// once a day (`media::retention`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accessed_day: Option<u64>,
}

impl MediaRecord {
    pub fn is_pending(&self) -> bool {
        self.pending_until_ms.is_some()
    }

    /// Whether a pending id can still be uploaded to at `now_ms`.
    pub fn pending_alive(&self, now_ms: u64) -> bool {
        self.pending_until_ms.is_some_and(|until| now_ms < until)
    }
}

/// A cached thumbnail of one media item at one size and method.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThumbnailRecord {
    pub content_type: String,
    pub size: u64,
    pub width: u32,
    pub height: u32,
    /// The original already fits the requested size: serve it instead of a file of its own.
    #[serde(default)]
    pub original: bool,
}

/// Bytes and files one owner has stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub bytes: u64,
    pub files: u64,
}

/// A cached URL preview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewRecord {
    pub fetched_ms: u64,
    /// The OpenGraph object answered to clients.
    pub data: serde_json::Map<String, serde_json::Value>,
}

/// `(server name, media id) -> record`.
pub const MEDIA_TABLE: Table<(String, String), Json<MediaRecord>> = Table::new(MEDIA);
/// `(server name, media id, thumbnail key) -> record`; the key names size, method, animation.
pub const THUMBNAILS_TABLE: Table<(String, String, String), Json<ThumbnailRecord>> =
    Table::new(MEDIA_THUMBNAILS);
/// `(owner, media id) -> expiry in ms`.
pub const PENDING_TABLE: Table<(String, String), u64> = Table::new(MEDIA_PENDING);
/// `(owner, server name, media id) -> ()`.
pub const BY_OWNER_TABLE: Table<(String, String, String), ()> = Table::new(MEDIA_BY_OWNER);
pub const USAGE_TABLE: Table<String, Json<UsageRecord>> = Table::new(MEDIA_USAGE);
pub const PREVIEWS_TABLE: Table<String, Json<PreviewRecord>> = Table::new(URL_PREVIEWS);
