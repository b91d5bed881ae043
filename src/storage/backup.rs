//! Online backups with RocksDB's backup engine, and restoring one into an empty directory.
//!
//! Backups are incremental (files shared between backups are stored once) and taken while
//! the server runs; the newest `database_backups_to_keep` are kept.

use std::path::Path;

use rust_rocksdb::{
    Env,
    backup::{BackupEngine, BackupEngineOptions, RestoreOptions},
};

use super::Engine;
use crate::{Error, Result};

/// One backup in the backup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    pub id: u32,
    /// Seconds since the Unix epoch.
    pub timestamp: i64,
    pub size_bytes: u64,
    pub files: u32,
}

fn open_engine(directory: &Path) -> Result<BackupEngine> {
    std::fs::create_dir_all(directory).map_err(|error| {
        Error::internal(format!("cannot create backup directory {}: {error}", directory.display()))
    })?;
    let options = BackupEngineOptions::new(directory)?;
    let env = Env::new()?;
    Ok(BackupEngine::open(&options, &env)?)
}

fn infos(engine: &BackupEngine) -> Vec<BackupInfo> {
    engine
        .get_backup_info()
        .into_iter()
        .map(|info| BackupInfo {
            id: info.backup_id,
            timestamp: info.timestamp,
            size_bytes: info.size,
            files: info.num_files,
        })
        .collect()
}

/// Takes a backup of `database` (flushing memtables first) and prunes to `keep` backups.
/// Blocking: call from the blocking pool.
pub fn create(database: &Engine, directory: &Path, keep: usize) -> Result<BackupInfo> {
    if keep == 0 {
        return Err(Error::internal("database_backups_to_keep is 0: backups are disabled"));
    }
    let mut engine = open_engine(directory)?;
    engine.create_new_backup_flush(database.raw(), true)?;
    engine.purge_old_backups(keep)?;
    infos(&engine)
        .into_iter()
        .max_by_key(|info| info.id)
        .ok_or_else(|| Error::internal("backup finished but is not listed"))
}

/// Every backup in `directory`, oldest first.
pub fn list(directory: &Path) -> Result<Vec<BackupInfo>> {
    if !directory.exists() {
        return Ok(Vec::new());
    }
    let engine = open_engine(directory)?;
    let mut all = infos(&engine);
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
    let all = infos(&engine);
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
    Ok(chosen)
}
