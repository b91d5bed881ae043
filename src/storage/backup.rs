//! Online backups with RocksDB's backup engine and the media files beside it, and restoring
//! one into an empty directory.
//!
//! Backups are incremental (files shared between backups are stored once) and taken while
//! the server runs; the newest `database_backups_to_keep` are kept.
//!
//! Media files (under `<database_path>/media/`) are not in the database, so a backup copies
//! them too, into `media/` of the backup directory (beside RocksDB's `meta/`, `private/` and
//! `shared_checksum/`, which its engine alone manages), and lists the ones that belong to
//! backup N in `media-manifests/N`. A media file never changes once it has its name (names
//! are hashes of an item's identity and IDs are not reused), so a file already in the store
//! is not copied again and files are shared by every backup that lists them; pruning a backup
//! deletes the files no remaining manifest lists. The files are copied once before the
//! database is backed up and once more after: a file the database refers to was either
//! present at the first pass or uploaded before the database backup and so present at the
//! second (unless it was deleted again in between, which then leaves it out).

use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
};

use rust_rocksdb::{
    Env,
    backup::{BackupEngine, BackupEngineOptions, RestoreOptions},
};

use super::Engine;
use crate::{Error, Result};

/// The directory of media files inside `database_path` (and inside a backup directory).
pub const MEDIA_DIRECTORY: &str = "media";
/// Where uploads are staged inside [`MEDIA_DIRECTORY`]; never backed up.
pub const MEDIA_STAGING: &str = "tmp";
/// The directory of per-backup media lists inside a backup directory.
const MEDIA_MANIFESTS: &str = "media-manifests";

/// One backup in the backup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    pub id: u32,
    /// Seconds since the Unix epoch.
    pub timestamp: i64,
    /// The database files' size and number.
    pub size_bytes: u64,
    pub files: u32,
    /// Media files that belong to the backup (`None`: taken without media, by an older
    /// version).
    pub media_files: Option<u64>,
}

fn open_engine(directory: &Path) -> Result<BackupEngine> {
    std::fs::create_dir_all(directory).map_err(|error| {
        Error::internal(format!("cannot create backup directory {}: {error}", directory.display()))
    })?;
    let options = BackupEngineOptions::new(directory)?;
    let env = Env::new()?;
    Ok(BackupEngine::open(&options, &env)?)
}

fn infos(engine: &BackupEngine, directory: &Path) -> Vec<BackupInfo> {
    engine
        .get_backup_info()
        .into_iter()
        .map(|info| BackupInfo {
            id: info.backup_id,
            timestamp: info.timestamp,
            size_bytes: info.size,
            files: info.num_files,
            media_files: read_manifest(directory, info.backup_id)
                .ok()
                .flatten()
                .map(|names| names.len() as u64),
        })
        .collect()
}

/// Takes a backup of `database` (flushing memtables first) with the media files under
/// `database_path/media`, and prunes to `keep` backups. Blocking: call from the blocking
/// pool.
pub fn create(database: &Engine, directory: &Path, keep: usize) -> Result<BackupInfo> {
    if keep == 0 {
        return Err(Error::internal("database_backups_to_keep is 0: backups are disabled"));
    }
    let media = database.path().join(MEDIA_DIRECTORY);
    let mut engine = open_engine(directory)?;
    let mut names = copy_media(&media, directory)?;
    engine.create_new_backup_flush(database.raw(), true)?;
    names.extend(copy_media(&media, directory)?);
    let id = engine
        .get_backup_info()
        .iter()
        .map(|info| info.backup_id)
        .max()
        .ok_or_else(|| Error::internal("backup finished but is not listed"))?;
    write_manifest(directory, id, &names)?;
    engine.purge_old_backups(keep)?;
    prune_media(directory, &engine)?;
    infos(&engine, directory)
        .into_iter()
        .find(|info| info.id == id)
        .ok_or_else(|| Error::internal("backup finished but is not listed"))
}

/// The media files under `media` (relative names such as `ab/cd/abcd…`), staging excluded.
fn media_names(media: &Path) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    if !media.exists() {
        return Ok(names);
    }
    // Two levels of shards, then the files: the layout `media::store` writes.
    for shard1 in read_dir(media)? {
        if !shard1.is_dir() || shard1.file_name().is_some_and(|name| name == MEDIA_STAGING) {
            continue;
        }
        for shard2 in read_dir(&shard1)? {
            if !shard2.is_dir() {
                continue;
            }
            for file in read_dir(&shard2)? {
                if !file.is_file() {
                    continue;
                }
                if let Ok(relative) = file.strip_prefix(media)
                    && let Some(relative) = relative.to_str()
                {
                    names.insert(relative.to_owned());
                }
            }
        }
    }
    Ok(names)
}

fn read_dir(directory: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(directory).map_err(|error| {
        Error::internal(format!("cannot list {}: {error}", directory.display()))
    })?;
    let mut paths = Vec::new();
    for entry in entries {
        paths.push(entry?.path());
    }
    Ok(paths)
}

/// Copies the media files not yet in the backup store (or whose size differs) into it;
/// returns every name found under `media`. A file deleted while this runs is skipped.
fn copy_media(media: &Path, directory: &Path) -> Result<BTreeSet<String>> {
    let names = media_names(media)?;
    let store = directory.join(MEDIA_DIRECTORY);
    let mut found = BTreeSet::new();
    for name in names {
        let source = media.join(&name);
        let target = store.join(&name);
        let Ok(metadata) = std::fs::metadata(&source) else {
            continue;
        };
        let present = std::fs::metadata(&target).is_ok_and(|copy| copy.len() == metadata.len());
        if !present && !copy_file(&source, &target)? {
            continue;
        }
        found.insert(name);
    }
    Ok(found)
}

/// Copies `source` to `target` through a temporary name, synced, so a crash never leaves a
/// partial file under a valid name. False when the source vanished meanwhile.
fn copy_file(source: &Path, target: &Path) -> Result<bool> {
    let directory =
        target.parent().ok_or_else(|| Error::internal("media path without a directory"))?;
    std::fs::create_dir_all(directory)?;
    let partial = target.with_extension("part");
    match std::fs::copy(source, &partial) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let _ = std::fs::remove_file(&partial);
            return Ok(false);
        }
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(Error::internal(format!(
                "cannot copy {} to {}: {error}",
                source.display(),
                partial.display()
            )));
        }
    }
    std::fs::File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, target)?;
    std::fs::File::open(directory)?.sync_all()?;
    Ok(true)
}

fn manifest_path(directory: &Path, id: u32) -> PathBuf {
    directory.join(MEDIA_MANIFESTS).join(id.to_string())
}

/// Records which media files belong to backup `id`, one name per line.
fn write_manifest(directory: &Path, id: u32, names: &BTreeSet<String>) -> Result<()> {
    let path = manifest_path(directory, id);
    let manifests = directory.join(MEDIA_MANIFESTS);
    std::fs::create_dir_all(&manifests)?;
    let partial = path.with_extension("part");
    {
        let mut file = std::fs::File::create(&partial)?;
        for name in names {
            writeln!(file, "{name}")?;
        }
        file.sync_all()?;
    }
    std::fs::rename(&partial, &path)?;
    std::fs::File::open(&manifests)?.sync_all()?;
    Ok(())
}

/// The media files of backup `id`; `None` when it has no manifest (an older backup).
fn read_manifest(directory: &Path, id: u32) -> Result<Option<BTreeSet<String>>> {
    match std::fs::read_to_string(manifest_path(directory, id)) {
        Ok(text) => {
            Ok(Some(text.lines().filter(|line| valid_name(line)).map(str::to_owned).collect()))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Whether a manifest line is a media name as [`media_names`] produces them (no way out of
/// the media directory).
fn valid_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|part| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_alphanumeric()))
}

/// Deletes the manifests of backups RocksDB no longer keeps and the media files no
/// remaining manifest lists.
fn prune_media(directory: &Path, engine: &BackupEngine) -> Result<()> {
    let kept: BTreeSet<u32> = engine.get_backup_info().iter().map(|info| info.backup_id).collect();
    let manifests = directory.join(MEDIA_MANIFESTS);
    let mut listed = BTreeSet::new();
    if manifests.exists() {
        for path in read_dir(&manifests)? {
            let id = path.file_name().and_then(|name| name.to_str()?.parse::<u32>().ok());
            match id {
                Some(id) if kept.contains(&id) => {
                    listed.extend(read_manifest(directory, id)?.unwrap_or_default());
                }
                // A manifest of a pruned backup, or a leftover partial one.
                _ => std::fs::remove_file(&path)?,
            }
        }
    }
    let store = directory.join(MEDIA_DIRECTORY);
    for name in media_names(&store)? {
        if !listed.contains(&name) {
            std::fs::remove_file(store.join(&name))?;
        }
    }
    Ok(())
}

/// Copies the media files of backup `id` into `database_path/media`. Returns how many were
/// restored and how many the store lacked.
fn restore_media(directory: &Path, database_path: &Path, id: u32) -> Result<Option<(u64, u64)>> {
    let Some(names) = read_manifest(directory, id)? else {
        return Ok(None);
    };
    let store = directory.join(MEDIA_DIRECTORY);
    let media = database_path.join(MEDIA_DIRECTORY);
    let (mut restored, mut missing) = (0, 0);
    for name in names {
        if copy_file(&store.join(&name), &media.join(&name))? {
            restored += 1;
        } else {
            missing += 1;
        }
    }
    Ok(Some((restored, missing)))
}

/// Every backup in `directory`, oldest first.
pub fn list(directory: &Path) -> Result<Vec<BackupInfo>> {
    if !directory.exists() {
        return Ok(Vec::new());
    }
    let engine = open_engine(directory)?;
    let mut all = infos(&engine, directory);
    all.sort_by_key(|info| info.id);
    Ok(all)
}

/// Restores backup `id` (0: the newest) from `directory` into `database_path`, which must not
/// hold a database. Blocking.
pub fn restore(directory: &Path, database_path: &Path, id: u32) -> Result<BackupInfo> {
    if database_path.join("CURRENT").exists() {
        return Err(Error::internal(format!(
            "{} already holds a database; move it aside before restoring",
            database_path.display()
        )));
    }
    let mut engine = open_engine(directory)?;
    let all = infos(&engine, directory);
    let chosen = if id == 0 {
        all.iter().max_by_key(|info| info.id)
    } else {
        all.iter().find(|info| info.id == id)
    }
    .cloned()
    .ok_or_else(|| Error::internal(format!("no backup {id} in {}", directory.display())))?;
    engine.verify_backup(chosen.id)?;
    let options = RestoreOptions::default();
    engine.restore_from_backup(database_path, database_path, &options, chosen.id)?;
    match restore_media(directory, database_path, chosen.id)? {
        None => tracing::warn!(
            backup = chosen.id,
            "this backup was taken without media files (by an older version): uploaded files \
             are not restored; copy <database_path>/media from elsewhere if you have it"
        ),
        Some((restored, 0)) => tracing::info!(backup = chosen.id, restored, "restored media files"),
        Some((restored, missing)) => tracing::warn!(
            backup = chosen.id,
            restored,
            missing,
            "some media files of this backup are missing from the backup directory; their \
             downloads will fail"
        ),
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, name: &str, bytes: &[u8]) {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
        std::fs::write(path, bytes).expect("write");
    }

    #[test]
    fn media_names_follow_the_store_layout_and_skip_staging() {
        let dir = tempfile::tempdir().expect("tempdir");
        put(dir.path(), "ab/cd/abcdef", b"one");
        put(dir.path(), "12/34/123456", b"two");
        put(dir.path(), "tmp/00/partial", b"staged");
        put(dir.path(), "stray", b"not a media file");
        let names = media_names(dir.path()).expect("names");
        assert_eq!(names, BTreeSet::from(["12/34/123456".to_owned(), "ab/cd/abcdef".to_owned()]));
    }

    #[test]
    fn manifests_only_name_files_inside_the_store() {
        assert!(valid_name("ab/cd/abcdef0123"));
        for bad in ["../cd/x", "ab/cd/../../etc", "/etc/passwd", "ab/cd", "ab/cd/e/f", "ab//x"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
