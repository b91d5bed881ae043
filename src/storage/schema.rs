//! The database schema version and forward migrations.
//!
//! A fresh database is stamped with [`CURRENT`]. An older database is migrated forward one
//! version at a time, each step in its own atomic batch that also records the new version, so
//! a crash mid-way resumes where it stopped. A database stamped newer than this binary is
//! refused rather than misread.

use super::{
    Batch, Engine,
    meta::{COUNTERS, SCHEMA_VERSION},
};
use crate::{Error, Result};

/// The schema this binary reads and writes.
pub const CURRENT: u64 = 1;

/// One forward step: from `to - 1` to `to`.
pub struct Migration {
    pub to: u64,
    pub describe: &'static str,
    pub run: fn(&Engine, &mut Batch) -> Result<()>,
}

/// Every migration, in order. Schema 1 is the first released layout.
pub static MIGRATIONS: &[Migration] = &[];

/// What opening did to the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Current,
    Migrated { from: u64 },
}

/// Checks the stored version, stamps a fresh database, or runs pending migrations.
pub fn prepare(engine: &Engine, migrations: &[Migration], current: u64) -> Result<Outcome> {
    let stored = COUNTERS.get(engine, &SCHEMA_VERSION.to_owned())?;
    if stored.is_none() && !engine.foreign_families().is_empty() {
        // An unstamped database with tables we never create belongs to another server
        // (Tuwunel and conduwuit use RocksDB too). Writing into it would damage it.
        let mut names = engine.foreign_families().to_vec();
        names.truncate(5);
        return Err(Error::internal(format!(
            "the database at {} was not created by this tuwunel (it holds tables such as {}); \
             it cannot be converted, so point database_path at an empty directory",
            engine.path().display(),
            names.join(", ")
        )));
    }
    for name in engine.foreign_families() {
        tracing::warn!(family = %name, "the database holds a table this version does not know");
    }
    let Some(stored) = stored else {
        let mut batch = Batch::new();
        COUNTERS.put(&mut batch, &SCHEMA_VERSION.to_owned(), &current);
        engine.write(batch)?;
        return Ok(Outcome::Created);
    };
    if stored > current {
        return Err(Error::internal(format!(
            "the database at {} has schema version {stored}, newer than this tuwunel understands \
             ({current}); run a newer tuwunel or restore a backup made by this version",
            engine.path().display()
        )));
    }
    if stored == current {
        return Ok(Outcome::Current);
    }
    for migration in migrations.iter().filter(|step| step.to > stored && step.to <= current) {
        tracing::warn!(to = migration.to, what = migration.describe, "migrating the database");
        let mut batch = Batch::new();
        (migration.run)(engine, &mut batch)?;
        COUNTERS.put(&mut batch, &SCHEMA_VERSION.to_owned(), &migration.to);
        engine.write(batch)?;
    }
    let reached = COUNTERS.get(engine, &SCHEMA_VERSION.to_owned())?.unwrap_or(stored);
    if reached != current {
        return Err(Error::internal(format!(
            "no migration path from schema {reached} to {current}"
        )));
    }
    Ok(Outcome::Migrated { from: stored })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{catalogue::META, engine::EngineOptions, meta::RECORDS, table::Table};

    fn open(dir: &std::path::Path) -> Engine {
        Engine::open(&EngineOptions::for_path(dir)).expect("open")
    }

    fn mark(_engine: &Engine, batch: &mut Batch) -> Result<()> {
        RECORDS.put(batch, &"migrated_to_2".to_owned(), &b"yes".to_vec());
        Ok(())
    }

    static STEPS: &[Migration] = &[Migration { to: 2, describe: "test step", run: mark }];

    #[test]
    fn fresh_is_stamped_then_current() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = open(dir.path());
        assert_eq!(prepare(&engine, MIGRATIONS, CURRENT).expect("prepare"), Outcome::Created);
        assert_eq!(prepare(&engine, MIGRATIONS, CURRENT).expect("prepare"), Outcome::Current);
    }

    #[test]
    fn older_is_migrated_forward() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = open(dir.path());
        prepare(&engine, STEPS, 1).expect("stamp v1");
        assert_eq!(prepare(&engine, STEPS, 2).expect("migrate"), Outcome::Migrated { from: 1 });
        let marker: Table<String, Vec<u8>> = Table::new(META);
        assert_eq!(
            marker.get(&engine, &"migrated_to_2".to_owned()).expect("read"),
            Some(b"yes".to_vec())
        );
        assert_eq!(prepare(&engine, STEPS, 2).expect("again"), Outcome::Current);
    }

    #[test]
    fn newer_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = open(dir.path());
        prepare(&engine, STEPS, 2).expect("stamp v2");
        let error = prepare(&engine, MIGRATIONS, 1).expect_err("must refuse");
        assert!(error.to_string().contains("newer than this tuwunel"), "{error}");
    }
}
