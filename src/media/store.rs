//! Media files on disk, under `<database_path>/media/`.
//!
//! A file's name is the SHA-256 of its `mxc://` identity (server name and media id, plus the
//! size and method for a thumbnail), sharded by its first two bytes: `media/ab/cd/abcd…`.
//! Hashing keeps names safe and uniform whatever a remote server calls its media, and the
//! shards keep directories small.
//!
//! Bytes arrive in a [`Staging`] file under `media/tmp/` (the same filesystem), are hashed
//! as they stream in, synced, and only then renamed to their final name, whose directory is
//! synced too. A crash therefore leaves either nothing or a complete file, never a partial
//! one under a valid name; the database row that makes a file reachable is committed after
//! the rename (see `media::owner`). Leftover staging files are removed at startup.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};

use crate::{Error, Result};

/// Bytes gathered before each write to the staging file: few enough blocking-pool round
/// trips for a large upload, little memory per upload.
const WRITE_BUFFER: usize = 1 << 20;

/// The media directory.
#[derive(Debug, Clone)]
pub struct MediaStore {
    root: PathBuf,
    staging: PathBuf,
}

impl MediaStore {
    /// Prepares `<database_path>/media/` and empties its staging directory. Blocking.
    pub fn open(database_path: &Path) -> Result<Self> {
        let root = database_path.join(crate::storage::backup::MEDIA_DIRECTORY);
        let staging = root.join(crate::storage::backup::MEDIA_STAGING);
        std::fs::create_dir_all(&staging)?;
        let mut removed = 0_usize;
        for entry in std::fs::read_dir(&staging)? {
            let path = entry?.path();
            if path.is_file() && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed unfinished uploads left by an earlier run");
        }
        Ok(Self { root, staging })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file name of a media item's content.
    pub fn content_name(server_name: &str, media_id: &str) -> String {
        hex_sha256(format!("{server_name}/{media_id}").as_bytes())
    }

    /// The file name of one thumbnail of a media item.
    pub fn thumbnail_name(server_name: &str, media_id: &str, thumbnail_key: &str) -> String {
        hex_sha256(format!("{server_name}/{media_id}/{thumbnail_key}").as_bytes())
    }

    /// Where a file of that name lives.
    pub fn path_of(&self, name: &str) -> PathBuf {
        let shard1 = name.get(0..2).unwrap_or("00");
        let shard2 = name.get(2..4).unwrap_or("00");
        self.root.join(shard1).join(shard2).join(name)
    }

    /// Starts a staging file that refuses to grow beyond `limit` bytes.
    pub async fn stage(&self, limit: u64) -> Result<Staging> {
        let name: u64 = rand::thread_rng().r#gen();
        let path = self.staging.join(format!("{name:016x}.part"));
        let file = tokio::fs::File::create(&path).await?;
        Ok(Staging {
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            path: TempPath(Some(path)),
            hasher: Sha256::new(),
            size: 0,
            limit,
        })
    }

    /// Moves a complete staged file to its final name and makes the rename durable.
    pub async fn persist(&self, staged: StagedFile, name: &str) -> Result<()> {
        let target = self.path_of(name);
        let mut guard = staged.path;
        let source = guard.0.clone().ok_or_else(|| Error::internal("staged file already used"))?;
        blocking(move || {
            let directory =
                target.parent().ok_or_else(|| Error::internal("media path without parent"))?;
            std::fs::create_dir_all(directory)?;
            std::fs::rename(&source, &target)?;
            std::fs::File::open(directory)?.sync_all()?;
            Ok(())
        })
        .await?;
        // Renamed away: nothing left to clean up.
        guard.0 = None;
        Ok(())
    }

    /// Opens a stored file for reading, with its length; `None` when it does not exist.
    pub async fn open_file(&self, name: &str) -> Result<Option<(tokio::fs::File, u64)>> {
        match tokio::fs::File::open(self.path_of(name)).await {
            Ok(file) => {
                let length = file.metadata().await?.len();
                Ok(Some((file, length)))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Deletes a stored file; a file already gone is not an error.
    pub async fn remove(&self, name: &str) -> Result<()> {
        match tokio::fs::remove_file(self.path_of(name)).await {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// Runs blocking filesystem work on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::internal(format!("blocking media task failed: {error}")))?
}

fn hex_sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// A file being received. Dropping it before [`Staging::finish`] deletes it.
pub struct Staging {
    file: BufWriter<tokio::fs::File>,
    path: TempPath,
    hasher: Sha256,
    size: u64,
    limit: u64,
}

impl Staging {
    /// Appends a chunk; `413 M_TOO_LARGE` once the total passes the limit.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(Error::too_large(format!(
                "The content is larger than the limit of {} bytes.",
                self.limit
            )));
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).await?;
        Ok(())
    }

    /// Bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Flushes and syncs the file: its bytes are on disk when this returns.
    pub async fn finish(mut self) -> Result<StagedFile> {
        self.file.flush().await?;
        self.file.get_mut().sync_all().await?;
        Ok(StagedFile { path: self.path, size: self.size, sha256: hex(&self.hasher.finalize()) })
    }
}

/// A complete, synced staging file waiting for its final name. Dropping it deletes it.
pub struct StagedFile {
    path: TempPath,
    pub size: u64,
    pub sha256: String,
}

impl StagedFile {
    /// Where the bytes are while staged (for reading them before they are kept).
    pub fn path(&self) -> Option<&Path> {
        self.path.0.as_deref()
    }
}

/// Deletes its file when dropped, unless the file was moved away.
struct TempPath(Option<PathBuf>);

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Unlinking is quick and cannot be awaited in `drop`; a failure only leaves a
            // staging file that the next start removes.
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sharded_hashes() {
        let store = MediaStore { root: PathBuf::from("/m"), staging: PathBuf::from("/m/tmp") };
        let name = MediaStore::content_name("example.org", "abc");
        assert_eq!(name.len(), 64);
        assert!(name.bytes().all(|byte| byte.is_ascii_hexdigit()));
        let path = store.path_of(&name);
        assert_eq!(path, PathBuf::from(format!("/m/{}/{}/{name}", &name[0..2], &name[2..4])));
        assert_ne!(name, MediaStore::content_name("example.org", "abd"));
        assert_ne!(name, MediaStore::thumbnail_name("example.org", "abc", "32x32-crop"));
    }

    #[tokio::test]
    async fn staging_enforces_the_limit_and_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MediaStore::open(dir.path()).expect("open");
        let mut staging = store.stage(4).await.expect("stage");
        staging.write(b"abcd").await.expect("within limit");
        let error = staging.write(b"e").await.expect_err("over the limit");
        assert_eq!(error.status(), axum::http::StatusCode::PAYLOAD_TOO_LARGE);
        drop(staging);
        assert_eq!(std::fs::read_dir(dir.path().join("media/tmp")).expect("dir").count(), 0);

        let mut staging = store.stage(100).await.expect("stage");
        staging.write(b"hello").await.expect("write");
        let staged = staging.finish().await.expect("finish");
        assert_eq!(staged.size, 5);
        assert_eq!(
            staged.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let name = MediaStore::content_name("example.org", "hello");
        store.persist(staged, &name).await.expect("persist");
        assert_eq!(std::fs::read(store.path_of(&name)).expect("read"), b"hello");
        assert_eq!(std::fs::read_dir(dir.path().join("media/tmp")).expect("dir").count(), 0);
    }
}
