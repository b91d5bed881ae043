//! The one module that knows RocksDB: opening the database with the catalogue's tuning,
//! point reads, ordered scans, snapshots, atomic batch writes and backups. Everything above
//! speaks in tables and typed keys.

use std::{
    ops::ControlFlow,
    path::{Path, PathBuf},
};

use rust_rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType, DBRecoveryMode,
    Direction as RocksDirection, IteratorMode, LogLevel, Options, ReadOptions, WriteBatch,
    WriteOptions,
    statistics::{StatsLevel, Ticker},
};

use super::{
    batch::{Batch, Op},
    catalogue::{Access, TABLES, TableId},
};
use crate::{Error, Result};

impl From<rust_rocksdb::Error> for Error {
    fn from(error: rust_rocksdb::Error) -> Self {
        Self::internal_from("database", error)
    }
}

/// Scan direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Reverse,
}

/// Called for each entry of a scan; `Break` stops the scan.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> ControlFlow<()> + 'a;

/// Read access to tables: implemented by the live database and by snapshots.
pub trait Read {
    /// The value stored under `key`, if any.
    fn get(&self, table: TableId, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Visits the entries whose key starts with `prefix`, in key order (or reverse), starting
    /// at `from` when given (inclusive), until `visit` breaks.
    fn scan(
        &self,
        table: TableId,
        prefix: &[u8],
        from: Option<&[u8]>,
        direction: Direction,
        visit: &mut Visitor<'_>,
    ) -> Result<()>;
}

/// Tuning that comes from the operator's configuration.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub path: PathBuf,
    pub cache_capacity_bytes: usize,
    pub parallelism: i32,
    /// The memtables of all tables together; past it the oldest is flushed.
    pub write_buffer_capacity_bytes: usize,
    pub log_level: LogLevel,
    pub max_log_file_size: usize,
    pub log_time_to_roll: usize,
    pub max_log_files: usize,
    pub compression: DBCompressionType,
    pub compression_level: i32,
    pub bottommost_compression: bool,
    pub bottommost_compression_level: i32,
    pub recovery_mode: DBRecoveryMode,
    pub direct_io: bool,
    pub paranoid_checks: bool,
    pub repair: bool,
    pub auto_compaction: bool,
    /// Rotational disks: larger readahead for compactions.
    pub large_reads: bool,
    /// Scales the bounds of the in-memory caches kept beside the database.
    pub cache_modifier: f64,
}

impl EngineOptions {
    /// Defaults suitable for tests and development.
    pub fn for_path(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cache_capacity_bytes: 64 << 20,
            write_buffer_capacity_bytes: 32 << 20,
            parallelism: 2,
            log_level: LogLevel::Error,
            max_log_file_size: 4 << 20,
            log_time_to_roll: 0,
            max_log_files: 3,
            compression: DBCompressionType::Lz4,
            compression_level: 32767,
            bottommost_compression: true,
            bottommost_compression_level: 32767,
            recovery_mode: DBRecoveryMode::PointInTime,
            direct_io: false,
            paranoid_checks: false,
            repair: false,
            auto_compaction: true,
            large_reads: false,
            cache_modifier: 1.0,
        }
    }
}

/// An open database.
pub struct Engine {
    db: DB,
    /// The options the database was opened with, which hold its statistics.
    options: Options,
    path: PathBuf,
    sync_write: WriteOptions,
    foreign_families: Vec<String>,
    /// The block cache every table shares, kept to report its usage.
    cache: Cache,
}

/// Where RocksDB's memory goes, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineMemory {
    /// Data, index and filter blocks in the shared block cache.
    pub block_cache: usize,
    /// The part of the block cache pinned by open iterators and L0 index/filter blocks.
    pub block_cache_pinned: usize,
    /// Memtables of every table, flushed or not yet.
    pub memtables: u64,
    /// Table readers outside the block cache.
    pub table_readers: u64,
}

impl Engine {
    /// Opens (creating if missing) the database with every catalogued table.
    pub fn open(options: &EngineOptions) -> Result<Self> {
        std::fs::create_dir_all(&options.path).map_err(|error| {
            Error::internal_from(
                format!("cannot create database directory {}", options.path.display()),
                error,
            )
        })?;
        let cache = Cache::new_lru_cache(options.cache_capacity_bytes);
        let db_options = db_options(options);

        if options.repair {
            tracing::warn!(path = %options.path.display(), "repairing the database before opening it");
            DB::repair(&db_options, &options.path)?;
        }

        let total_weight: u32 = TABLES.iter().map(|table| table.cache_weight).sum();
        let mut descriptors: Vec<ColumnFamilyDescriptor> = TABLES
            .iter()
            .map(|table| {
                let share = options.cache_capacity_bytes as u64 * u64::from(table.cache_weight)
                    / u64::from(total_weight.max(1));
                ColumnFamilyDescriptor::new(
                    table.name,
                    table_options(options, table.access, &cache, share),
                )
            })
            .collect();

        // RocksDB refuses to open a database without naming every family it holds; families a
        // newer or older schema left behind are opened with plain options and left alone.
        let existing = DB::list_cf(&Options::default(), &options.path).unwrap_or_default();
        let ours = |name: &str| TABLES.iter().any(|table| table.name == name);
        if !existing.is_empty()
            && !existing.iter().any(|name| name == "meta")
            && existing.iter().any(|name| name != "default" && !ours(name))
        {
            // Every database this server creates has `meta`; one without it but with other
            // tables belongs to another server (Tuwunel and conduwuit use RocksDB too), and
            // opening it here would add our tables to it.
            let mut names: Vec<&str> =
                existing.iter().map(String::as_str).filter(|name| *name != "default").collect();
            names.truncate(5);
            return Err(Error::internal(format!(
                "the database at {} was not created by this tuwunel (it holds tables such as {}); \
                 it cannot be converted, so point database_path at an empty directory",
                options.path.display(),
                names.join(", ")
            )));
        }
        let mut foreign_families = Vec::new();
        for name in existing {
            if name != "default" && !TABLES.iter().any(|table| table.name == name) {
                descriptors.push(ColumnFamilyDescriptor::new(name.clone(), Options::default()));
                foreign_families.push(name);
            }
        }

        let db =
            DB::open_cf_descriptors(&db_options, &options.path, descriptors).map_err(|error| {
                Error::internal_from(
                    format!("cannot open database at {}", options.path.display()),
                    error,
                )
            })?;
        let mut sync_write = WriteOptions::default();
        sync_write.set_sync(true);
        Ok(Self {
            db,
            options: db_options,
            path: options.path.clone(),
            sync_write,
            foreign_families,
            cache,
        })
    }

    /// Column families present in the database that the catalogue does not declare.
    pub fn foreign_families(&self) -> &[String] {
        &self.foreign_families
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn family(&self, table: TableId) -> Result<&rust_rocksdb::ColumnFamily> {
        self.db
            .cf_handle(table.name())
            .ok_or_else(|| Error::internal(format!("table {} is not open", table.name())))
    }

    /// Writes `batch` atomically and durably (one WAL sync). Only the Writer calls this.
    pub(super) fn write(&self, batch: Batch) -> Result<()> {
        let mut raw = WriteBatch::default();
        for op in batch.into_ops() {
            match op {
                Op::Put { table, key, value } => raw.put_cf(self.family(table)?, key, value),
                Op::Delete { table, key } => raw.delete_cf(self.family(table)?, key),
            }
        }
        self.db.write_opt(&raw, &self.sync_write)?;
        Ok(())
    }

    /// A consistent view of the whole database as of now.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot { engine: self, inner: self.db.snapshot() }
    }

    /// Flushes memtables and the WAL; used at shutdown and before backups.
    pub fn flush(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        for table in TABLES {
            if let Some(family) = self.db.cf_handle(table.name) {
                self.db.flush_cf(family)?;
            }
        }
        Ok(())
    }

    /// Approximate on-disk and in-memory sizes per table, for metrics and admin output.
    pub fn table_sizes(&self) -> Vec<(&'static str, u64, u64)> {
        TABLES
            .iter()
            .filter_map(|table| {
                let family = self.db.cf_handle(table.name)?;
                let disk = self
                    .db
                    .property_int_value_cf(family, "rocksdb.total-sst-files-size")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let memory = self
                    .db
                    .property_int_value_cf(family, "rocksdb.cur-size-all-mem-tables")
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                Some((table.name, disk, memory))
            })
            .collect()
    }

    /// RocksDB's memory use, summed over the tables.
    pub fn memory(&self) -> EngineMemory {
        let mut memory = EngineMemory {
            block_cache: self.cache.get_usage(),
            block_cache_pinned: self.cache.get_pinned_usage(),
            ..EngineMemory::default()
        };
        for table in TABLES {
            let Some(family) = self.db.cf_handle(table.name) else { continue };
            let property = |name: &str| {
                self.db.property_int_value_cf(family, name).ok().flatten().unwrap_or(0)
            };
            memory.memtables += property("rocksdb.size-all-mem-tables");
            memory.table_readers += property("rocksdb.estimate-table-readers-mem");
        }
        memory
    }

    /// WAL syncs since the database was opened (RocksDB's `rocksdb.wal.synced` ticker).
    /// Every acknowledged commit made one before its acknowledgement (see the Writer); the
    /// storage tests hold it to that.
    pub fn wal_syncs(&self) -> u64 {
        self.options.get_ticker_count(Ticker::WalFileSynced)
    }

    pub(super) fn raw(&self) -> &DB {
        &self.db
    }

    /// Stops background compactions and flushes so the database closes promptly.
    pub fn prepare_close(&self) {
        self.db.cancel_all_background_work(true);
    }
}

impl Read for Engine {
    fn get(&self, table: TableId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_pinned_cf(self.family(table)?, key)?.map(|slice| slice.to_vec()))
    }

    fn scan(
        &self,
        table: TableId,
        prefix: &[u8],
        from: Option<&[u8]>,
        direction: Direction,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        let family = self.family(table)?;
        let upper = upper_bound(prefix);
        let start = start_key(prefix, from, direction, upper.as_deref());
        let iter = self.db.iterator_cf_opt(family, scan_options(prefix), mode(&start, direction));
        drive(iter, prefix, visit)
    }
}

/// A point-in-time view for handlers that read several keys and need them consistent.
pub struct Snapshot<'a> {
    engine: &'a Engine,
    inner: rust_rocksdb::Snapshot<'a>,
}

impl Read for Snapshot<'_> {
    fn get(&self, table: TableId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let family = self.engine.family(table)?;
        Ok(self.inner.get_pinned_cf(family, key)?.map(|slice| slice.to_vec()))
    }

    fn scan(
        &self,
        table: TableId,
        prefix: &[u8],
        from: Option<&[u8]>,
        direction: Direction,
        visit: &mut Visitor<'_>,
    ) -> Result<()> {
        let family = self.engine.family(table)?;
        let upper = upper_bound(prefix);
        let start = start_key(prefix, from, direction, upper.as_deref());
        let iter =
            self.inner.iterator_cf_opt(family, scan_options(prefix), mode(&start, direction));
        drive(iter, prefix, visit)
    }
}

/// Where a scan begins: `from` when given, else the first (or last) key of the prefix range.
enum Start {
    First,
    Last,
    At(Vec<u8>),
}

fn start_key(
    prefix: &[u8],
    from: Option<&[u8]>,
    direction: Direction,
    upper: Option<&[u8]>,
) -> Start {
    match (from, direction) {
        (Some(from), _) => Start::At(from.to_vec()),
        (None, Direction::Forward) if prefix.is_empty() => Start::First,
        (None, Direction::Forward) => Start::At(prefix.to_vec()),
        (None, Direction::Reverse) => match upper {
            Some(upper) => Start::At(upper.to_vec()),
            None => Start::Last,
        },
    }
}

fn mode(start: &Start, direction: Direction) -> IteratorMode<'_> {
    match start {
        Start::First => IteratorMode::Start,
        Start::Last => IteratorMode::End,
        Start::At(key) => IteratorMode::From(
            key,
            match direction {
                Direction::Forward => RocksDirection::Forward,
                Direction::Reverse => RocksDirection::Reverse,
            },
        ),
    }
}

fn scan_options(prefix: &[u8]) -> ReadOptions {
    let mut options = ReadOptions::default();
    // Bounds apply in both directions: a reverse scan seeded at the upper bound lands on the
    // last key below it.
    if let Some(upper) = upper_bound(prefix) {
        options.set_iterate_upper_bound(upper);
    }
    if !prefix.is_empty() {
        options.set_iterate_lower_bound(prefix.to_vec());
    }
    options
}

/// The smallest key greater than every key starting with `prefix` (`None`: no such key).
fn upper_bound(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < u8::MAX {
            upper.push(last + 1);
            return Some(upper);
        }
    }
    None
}

fn drive<'a, D: rust_rocksdb::DBAccess>(
    iter: rust_rocksdb::DBIteratorWithThreadMode<'a, D>,
    prefix: &[u8],
    visit: &mut Visitor<'_>,
) -> Result<()> {
    for item in iter {
        let (key, value) = item?;
        if !key.starts_with(prefix) {
            break;
        }
        if visit(&key, &value).is_break() {
            break;
        }
    }
    Ok(())
}

fn db_options(options: &EngineOptions) -> Options {
    let mut db = Options::default();
    db.create_if_missing(true);
    db.create_missing_column_families(true);
    db.increase_parallelism(options.parallelism.max(1));
    db.set_max_background_jobs(options.parallelism.clamp(2, 16));
    db.set_log_level(options.log_level);
    db.set_max_log_file_size(options.max_log_file_size);
    db.set_log_file_time_to_roll(options.log_time_to_roll);
    db.set_keep_log_file_num(options.max_log_files.max(1));
    db.set_wal_recovery_mode(options.recovery_mode);
    db.set_paranoid_checks(options.paranoid_checks);
    db.set_use_direct_reads(options.direct_io);
    db.set_use_direct_io_for_flush_and_compaction(options.direct_io);
    // Every write goes through the WAL, whose replay after a crash restores all families to
    // the same point, so each family flushes on its own. (Atomic flush made one busy family's
    // full memtable flush every family, leaving tiny files that then cost compaction.)
    db.set_avoid_unnecessary_blocking_io(true);
    db.set_max_total_wal_size(256 << 20);
    // Flushes and compactions hand their files to the disk a megabyte at a time, so the
    // WAL's sync after each commit never waits behind a whole file's writeback.
    db.set_bytes_per_sync(1 << 20);
    db.set_db_write_buffer_size(options.write_buffer_capacity_bytes.max(1 << 20));
    // Counters only (no histograms or timers, which cost on every operation): they show
    // that commits are synced to the WAL (`Engine::wal_syncs`).
    db.enable_statistics();
    db.set_statistics_level(StatsLevel::ExceptHistogramOrTimers);
    if options.large_reads {
        db.set_compaction_readahead_size(4 << 20);
    }
    db
}

fn table_options(
    options: &EngineOptions,
    access: Access,
    cache: &Cache,
    cache_share: u64,
) -> Options {
    let mut table = Options::default();
    let mut block = BlockBasedOptions::default();
    block.set_block_cache(cache);
    block.set_format_version(6);
    block.set_cache_index_and_filter_blocks(true);
    block.set_pin_l0_filter_and_index_blocks_in_cache(true);
    match access {
        Access::Point => {
            block.set_bloom_filter(10.0, false);
            block.set_block_size(4 << 10);
            table.set_memtable_whole_key_filtering(true);
        }
        Access::Scan => {
            block.set_bloom_filter(10.0, false);
            block.set_block_size(16 << 10);
        }
        Access::Tiny => {
            block.set_block_size(4 << 10);
        }
    }
    table.set_block_based_table_factory(&block);
    table.set_level_compaction_dynamic_level_bytes(true);
    table.set_disable_auto_compactions(!options.auto_compaction);
    table.set_compression_type(options.compression);
    table.set_compression_options(-14, options.compression_level, 0, 0);
    if options.bottommost_compression {
        table.set_bottommost_compression_type(DBCompressionType::Zstd);
        table.set_bottommost_compression_options(
            -14,
            options.bottommost_compression_level,
            0,
            0,
            true,
        );
    }
    // Keep memtables proportional to the table's cache share, within sane limits.
    let write_buffer = (cache_share / 4).clamp(1 << 20, 64 << 20);
    table.set_write_buffer_size(usize::try_from(write_buffer).unwrap_or(64 << 20));
    // Levels sized from the write buffer rather than RocksDB's 64 MiB defaults: the four L0
    // files that trigger a compaction then meet a base level of similar size, split into
    // files small enough that one compaction rewrites only the key range it overlaps. With
    // the defaults, each flush of a 1 MiB buffer of keys spread over all users led to
    // rewriting the whole table.
    table.set_max_bytes_for_level_base((write_buffer * 4).max(16 << 20));
    table.set_target_file_size_base(write_buffer.max(8 << 20));
    table
}

#[cfg(test)]
mod tests {
    use super::upper_bound;

    #[test]
    fn upper_bounds() {
        assert_eq!(upper_bound(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(upper_bound(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(upper_bound(&[0xFF, 0xFF]), None);
        assert_eq!(upper_bound(b""), None);
    }
}
