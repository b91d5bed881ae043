//! Caches of rows that never change once written, shared by every reader: a cached value is
//! always right, so the only policy is a bound on size (crude: past it the cache starts over,
//! and whatever was dropped reloads from storage).
//!
//! - State snapshots: reading a room's state walks up to [`crate::rooms::state::FULL_EVERY`]
//!   delta rows, and every /sync response that checks history visibility walks the same ones.
//! - State facts: the `membership` of a member event and the `history_visibility` of a
//!   visibility event, by short event id. Redaction keeps both fields, so they are as
//!   immutable as the snapshots; visibility checks need them without parsing the event.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use dashmap::DashMap;

use super::{
    Read,
    rooms::{SNAPSHOTS_TABLE, Snapshot},
};
use crate::Result;

/// A bounded map from a short id to an immutable value, weighed by `weight`.
pub struct ImmutableCache<V> {
    values: DashMap<u64, Arc<V>>,
    weight: AtomicUsize,
    limit: usize,
}

impl<V> ImmutableCache<V> {
    pub fn new(limit: usize) -> Self {
        Self { values: DashMap::new(), weight: AtomicUsize::new(0), limit }
    }

    pub fn get(&self, id: u64) -> Option<Arc<V>> {
        self.values.get(&id).map(|value| Arc::clone(&value))
    }

    /// Keeps `value` (of `weight` units) under `id`, starting over when the bound is passed.
    pub fn insert(&self, id: u64, value: Arc<V>, weight: usize) {
        let weight = weight.max(1);
        if self.weight.fetch_add(weight, Ordering::AcqRel) + weight > self.limit {
            self.values.clear();
            self.weight.store(weight, Ordering::Release);
        }
        self.values.insert(id, value);
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// State entries the snapshot cache holds (16 bytes each, plus the map's share).
const SNAPSHOT_ENTRY_LIMIT: usize = 256 * 1024;

/// State facts kept (a short string each).
const FACT_LIMIT: usize = 256 * 1024;

/// The immutable caches a storage keeps.
pub struct ImmutableCaches {
    snapshots: ImmutableCache<Snapshot>,
    facts: ImmutableCache<Option<String>>,
}

impl Default for ImmutableCaches {
    fn default() -> Self {
        Self {
            snapshots: ImmutableCache::new(SNAPSHOT_ENTRY_LIMIT),
            facts: ImmutableCache::new(FACT_LIMIT),
        }
    }
}

impl ImmutableCaches {
    /// The snapshot `id`, from the cache or read through `reader`.
    pub fn snapshot(
        &self,
        reader: &(impl Read + ?Sized),
        id: u64,
    ) -> Result<Option<Arc<Snapshot>>> {
        if let Some(snapshot) = self.snapshots.get(id) {
            return Ok(Some(snapshot));
        }
        let Some(snapshot) = SNAPSHOTS_TABLE.get(reader, &id)? else {
            return Ok(None);
        };
        let snapshot = Arc::new(snapshot);
        self.snapshots.insert(id, Arc::clone(&snapshot), snapshot.entries.len());
        Ok(Some(snapshot))
    }

    /// The fact recorded for event `short`, computing it with `read` on a miss.
    pub fn fact(
        &self,
        short: u64,
        read: impl FnOnce() -> Result<Option<String>>,
    ) -> Result<Arc<Option<String>>> {
        if let Some(fact) = self.facts.get(short) {
            return Ok(fact);
        }
        let fact = Arc::new(read()?);
        self.facts.insert(short, Arc::clone(&fact), 1);
        Ok(fact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Batch, EngineOptions, Storage};

    #[tokio::test]
    async fn cached_snapshots_match_storage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (storage, _) = Storage::open(&EngineOptions::for_path(dir.path())).expect("open");
        let mut batch = Batch::new();
        SNAPSHOTS_TABLE.put(&mut batch, &2, &Snapshot { parent: Some(1), entries: vec![(7, 9)] });
        storage.writer().commit(batch).await.expect("commit");

        let caches = ImmutableCaches::default();
        let delta = caches.snapshot(storage.engine(), 2).expect("read").expect("present");
        assert_eq!((delta.parent, delta.entries.clone()), (Some(1), vec![(7, 9)]));
        assert!(caches.snapshot(storage.engine(), 99).expect("read").is_none());
        assert_eq!(caches.snapshots.len(), 1);
        let fact = caches.fact(5, || Ok(Some("join".to_owned()))).expect("fact");
        assert_eq!(fact.as_deref(), Some("join"));
        let again = caches.fact(5, || panic!("read again")).expect("cached");
        assert_eq!(again.as_deref(), Some("join"));
        storage.close().await;
    }

    #[test]
    fn a_full_cache_starts_over() {
        let cache = ImmutableCache::new(10);
        cache.insert(1, Arc::new(()), 6);
        cache.insert(2, Arc::new(()), 3);
        assert_eq!(cache.len(), 2);
        // 6 + 3 + 4 passes the bound of 10: only the newest value stays.
        cache.insert(3, Arc::new(()), 4);
        assert_eq!(cache.len(), 1);
        assert!(cache.get(3).is_some() && cache.get(1).is_none());
        assert!(!cache.is_empty());
    }
}
