//! Storage: RocksDB behind typed tables, the Writer that serializes every write, short-id
//! interning, the schema version and backups.
//!
//! Reads go straight to the database (or a [`Snapshot`] when several keys must agree); writes
//! are [`Batch`]es handed to the [`Writer`], which commits them durably in groups.

pub mod account_data;
pub mod appservices;
pub mod backup;
pub mod batch;
pub mod catalogue;
pub mod codec;
pub mod coherent_cache;
pub mod dag;
pub mod engine;
pub mod ephemeral;
pub mod event_cache;
pub mod federation;
pub mod immutable_cache;
pub mod keys;
pub mod media;
pub mod meta;
pub mod push;
pub mod recent_timeline;
pub mod rooms;
pub mod schema;
pub mod shortid;
pub mod table;
pub mod users;
pub mod writer;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use rust_rocksdb::{DBCompressionType, DBRecoveryMode, LogLevel};

pub use self::{
    backup::BackupInfo,
    batch::Batch,
    engine::{Direction, Engine, EngineOptions, Read, Snapshot},
    shortid::{Interner, Namespace},
    table::Table,
    writer::{Writer, WriterStats},
};
use crate::{Config, Error, Result};

/// The open database and its single write path.
pub struct Storage {
    engine: Arc<Engine>,
    writer: Writer,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    interner: Interner,
    caches: immutable_cache::ImmutableCaches,
    events: event_cache::EventCache,
    coherent: coherent_cache::CoherentCaches,
    backup_directory: Option<PathBuf>,
    backups_to_keep: usize,
    backup_lock: tokio::sync::Mutex<()>,
}

impl Storage {
    /// Opens the database, prepares its schema and starts the Writer. Blocking.
    pub fn open(options: &EngineOptions) -> Result<(Self, schema::Outcome)> {
        let engine = Arc::new(Engine::open(options)?);
        let outcome = schema::prepare(&engine, schema::MIGRATIONS, schema::CURRENT)?;
        let interner = Interner::load(&*engine)?;
        let modifier = options.cache_modifier;
        let (writer, thread) = Writer::start(Arc::clone(&engine), interner.counter(), modifier)?;
        Ok((
            Self {
                engine,
                writer,
                writer_thread: Mutex::new(Some(thread)),
                interner,
                caches: immutable_cache::ImmutableCaches::scaled(modifier),
                events: event_cache::EventCache::scaled(modifier),
                coherent: coherent_cache::CoherentCaches::scaled(modifier),
                backup_directory: None,
                backups_to_keep: 1,
                backup_lock: tokio::sync::Mutex::new(()),
            },
            outcome,
        ))
    }

    /// Sets where `backup` writes and how many backups it keeps.
    pub fn with_backups(mut self, directory: Option<PathBuf>, keep: usize) -> Self {
        self.backup_directory = directory;
        self.backups_to_keep = keep;
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn snapshot(&self) -> Snapshot<'_> {
        self.engine.snapshot()
    }

    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    pub fn interner(&self) -> &Interner {
        &self.interner
    }

    /// Decoded state snapshots and state facts (immutable, so shared by every reader).
    pub fn caches(&self) -> &immutable_cache::ImmutableCaches {
        &self.caches
    }

    /// Parsed events by short id (rewritten only by redaction).
    pub fn events(&self) -> &event_cache::EventCache {
        &self.events
    }

    /// The values of a stream table keyed by position (such as the users whose presence or
    /// devices changed) in `(since, upto]`, oldest first; no scan when the Writer's mark
    /// shows the table gained nothing since `since`.
    pub fn stream_values<V: codec::Value>(
        &self,
        table: Table<u64, V>,
        since: u64,
        upto: u64,
    ) -> Result<Vec<V>> {
        let mut values = Vec::new();
        if !self.writer.written_since(table.id(), since) {
            return Ok(values);
        }
        table.scan(
            &*self.engine,
            &codec::Prefix::all(),
            Some(&since.saturating_add(1)),
            Direction::Forward,
            |position, value| {
                if position > upto {
                    return std::ops::ControlFlow::Break(());
                }
                values.push(value);
                std::ops::ControlFlow::Continue(())
            },
        )?;
        Ok(values)
    }

    /// Caches of changing rows that writers keep exact (memberships, unread counts, key
    /// supply).
    pub fn coherent(&self) -> &coherent_cache::CoherentCaches {
        &self.coherent
    }

    /// What every in-memory cache holds, for `/metrics` and `!admin server memory-usage`.
    pub fn cache_usage(&self) -> Vec<CacheUsage> {
        let coherent = &self.coherent;
        let counted =
            |label, description, entries| CacheUsage { label, description, entries, bytes: None };
        let mut usage = vec![
            CacheUsage {
                label: "events",
                description: "parsed events",
                entries: self.events.len(),
                bytes: Some(self.events.bytes()),
            },
            counted("memberships", "memberships (users)", coherent.memberships.len()),
            counted("unread_counts", "unread counts (user and room)", coherent.unread_counts.len()),
            counted("key_supply", "device key counts", coherent.key_supply.len()),
            counted(
                "to_device_queued",
                "to-device queues (devices)",
                coherent.to_device_queued.len(),
            ),
            counted("ignored_users", "ignore lists (users)", coherent.ignored_users.len()),
            counted("room_activity", "room activity (rooms)", coherent.room_activity.len()),
            counted(
                "recent_timeline",
                "recent timeline (rooms)",
                self.writer.recent_timeline().rooms(),
            ),
        ];
        usage.extend(self.caches.usage());
        usage
    }

    fn backup_directory(&self) -> Result<PathBuf> {
        self.backup_directory
            .clone()
            .ok_or_else(|| Error::internal("database_backup_path is not set; backups are disabled"))
    }

    /// Takes an online backup.
    pub async fn backup(self: &Arc<Self>) -> Result<BackupInfo> {
        let directory = self.backup_directory()?;
        let _one_at_a_time = self.backup_lock.lock().await;
        let storage = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            backup::create(&storage.engine, &directory, storage.backups_to_keep)
        })
        .await
        .map_err(|error| Error::internal(format!("backup task failed: {error}")))?
    }

    /// The backups present, oldest first.
    pub async fn list_backups(&self) -> Result<Vec<BackupInfo>> {
        let directory = self.backup_directory()?;
        tokio::task::spawn_blocking(move || backup::list(&directory))
            .await
            .map_err(|error| Error::internal(format!("backup listing failed: {error}")))?
    }

    /// Stops the Writer after it commits what is queued, flushes, and quiesces background
    /// work. The database closes when the last handle is dropped.
    pub async fn close(&self) {
        self.writer.stop().await;
        let thread = self.writer_thread.lock().ok().and_then(|mut slot| slot.take());
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        self.engine.prepare_close();
    }
}

impl Drop for Storage {
    /// A storage dropped without [`Storage::close`] (a server dropped rather than stopped, a
    /// failed start, a test) stops and joins its Writer here. Otherwise the Writer's thread
    /// would hold the last handle on the engine and close RocksDB after this returns, and a
    /// process exiting meanwhile aborts inside RocksDB's teardown.
    fn drop(&mut self) {
        let thread = self.writer_thread.get_mut().ok().and_then(Option::take);
        if let Some(thread) = thread {
            self.writer.stop_blocking();
            let _ = thread.join();
        }
    }
}

/// The engine tuning the operator configured.
pub fn engine_options(config: &Config) -> EngineOptions {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let parallelism = match config.rocksdb_parallelism_threads {
        0 => cores.max(2),
        threads => threads,
    };
    let spinning = config.rocksdb_optimize_for_spinning_disks;
    EngineOptions {
        path: config.database_path.clone(),
        cache_capacity_bytes: config.db_cache_bytes(),
        write_buffer_capacity_bytes: config.db_write_buffer_bytes(),
        parallelism: i32::try_from(if spinning { parallelism.min(2) } else { parallelism })
            .unwrap_or(2),
        log_level: match config.rocksdb_log_level.as_str() {
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" => LogLevel::Warn,
            "fatal" => LogLevel::Fatal,
            "header" => LogLevel::Header,
            _ => LogLevel::Error,
        },
        max_log_file_size: config.rocksdb_max_log_file_size,
        log_time_to_roll: config.rocksdb_log_time_to_roll,
        max_log_files: config.rocksdb_max_log_files,
        compression: match config.rocksdb_compression_algo.as_str() {
            "lz4" => DBCompressionType::Lz4,
            "none" => DBCompressionType::None,
            _ => DBCompressionType::Zstd,
        },
        compression_level: config.rocksdb_compression_level,
        bottommost_compression: config.rocksdb_bottommost_compression,
        bottommost_compression_level: config.rocksdb_bottommost_compression_level,
        recovery_mode: match config.rocksdb_recovery_mode {
            0 => DBRecoveryMode::AbsoluteConsistency,
            2 => DBRecoveryMode::PointInTime,
            3 => DBRecoveryMode::SkipAnyCorruptedRecord,
            _ => DBRecoveryMode::TolerateCorruptedTailRecords,
        },
        direct_io: config.rocksdb_direct_io,
        paranoid_checks: config.rocksdb_paranoid_file_checks,
        repair: config.rocksdb_repair,
        auto_compaction: config.rocksdb_compaction,
        large_reads: spinning,
        cache_modifier: config.cache_capacity_modifier,
    }
}

/// One in-memory cache's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheUsage {
    /// The `cache` label of its metrics.
    pub label: &'static str,
    /// What it holds, for people.
    pub description: &'static str,
    pub entries: usize,
    /// The memory its entries take, as estimated for its bound; `None` for caches bounded by
    /// their number of keys.
    pub bytes: Option<usize>,
}

/// `base` scaled by the operator's cache modifier (at least one).
pub(crate) fn scaled(base: usize, modifier: f64) -> usize {
    // The cast saturates on absurd modifiers by design.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let scaled = (base as f64 * modifier.max(0.0)) as usize;
    scaled.max(1)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{EngineOptions, Storage, scaled};

    /// A storage dropped without `close()` (a server that was never stopped, a test that
    /// failed) has let go of the database when the drop returns: were the Writer's thread
    /// still closing RocksDB then, a process exiting at that moment aborts in RocksDB's
    /// teardown.
    #[test]
    fn a_dropped_storage_has_closed_its_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        for round in 0..10 {
            let (storage, _) = Storage::open(&EngineOptions::for_path(dir.path())).expect("open");
            let engine = Arc::downgrade(&storage.engine);
            drop(storage);
            assert!(engine.upgrade().is_none(), "round {round}: the engine outlived its storage");
        }
    }

    #[test]
    fn cache_bounds_scale_and_stay_positive() {
        assert_eq!(scaled(1000, 1.0), 1000);
        assert_eq!(scaled(1000, 0.25), 250);
        assert_eq!(scaled(1000, 2.0), 2000);
        assert_eq!(scaled(1000, 0.0), 1, "a bound of zero would cache nothing and churn");
        assert_eq!(scaled(1000, -3.0), 1);
    }
}
