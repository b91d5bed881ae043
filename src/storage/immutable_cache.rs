//! Caches of rows that never change once written, shared by every reader: a cached value is
//! always right, so the only policy is a bound on size (crude: past it the cache starts over,
//! and whatever was dropped reloads from storage).
//!
//! - State snapshots: reading a room's state walks up to [`crate::rooms::state::FULL_EVERY`]
//!   delta rows, and every /sync response that checks history visibility walks the same ones.
//! - State lookups: the event for one state key at one snapshot, the walk's result.
//! - State keys: the short id of an interned `(kind, state_key)` (only ids that exist: one
//!   not interned yet may be later).
//! - State facts: the `membership` of a member event and the `history_visibility` of a
//!   visibility event, by short event id. Redaction keeps both fields, so they are as
//!   immutable as the snapshots; visibility checks need them without parsing the event.
//! - Room records: a room's short id, version and creator, written once at its creation.

use std::{
    hash::Hash,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use dashmap::DashMap;

use super::{
    Read,
    codec::Json,
    rooms::{ROOMS_TABLE, RoomRecord, SNAPSHOTS_TABLE, Snapshot},
};
use crate::Result;

/// A bounded map from a key to an immutable value, each weighed when inserted.
pub struct ImmutableCache<K, V> {
    values: DashMap<K, Arc<V>>,
    weight: AtomicUsize,
    limit: usize,
}

impl<K: Hash + Eq, V> ImmutableCache<K, V> {
    pub fn new(limit: usize) -> Self {
        Self { values: DashMap::new(), weight: AtomicUsize::new(0), limit }
    }

    pub fn get<Q: Hash + Eq + ?Sized>(&self, id: &Q) -> Option<Arc<V>>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.values.get(id).map(|value| Arc::clone(&value))
    }

    /// Keeps `value` (of `weight` units) under `id`, starting over when the bound is passed.
    pub fn insert(&self, id: K, value: Arc<V>, weight: usize) {
        let weight = weight.max(1);
        if self.weight.fetch_add(weight, Ordering::AcqRel) + weight > self.limit {
            self.values.clear();
            self.weight.store(weight, Ordering::Release);
        }
        self.values.insert(id, value);
    }

    /// Forgets `id`.
    pub fn remove<Q: Hash + Eq + ?Sized>(&self, id: &Q)
    where
        K: std::borrow::Borrow<Q>,
    {
        self.values.remove(id);
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

/// Entries kept by each of the small caches (facts, lookups, state keys).
const SMALL_LIMIT: usize = 256 * 1024;

/// The immutable caches a storage keeps.
pub struct ImmutableCaches {
    snapshots: ImmutableCache<u64, Snapshot>,
    lookups: ImmutableCache<(u64, u64), Option<u64>>,
    state_keys: ImmutableCache<Vec<u8>, u64>,
    facts: ImmutableCache<u64, Option<String>>,
    rooms: ImmutableCache<String, RoomRecord>,
}

impl Default for ImmutableCaches {
    fn default() -> Self {
        Self::scaled(1.0)
    }
}

impl ImmutableCaches {
    /// Caches whose bounds are scaled by the operator's cache modifier.
    pub fn scaled(modifier: f64) -> Self {
        let small = super::scaled(SMALL_LIMIT, modifier);
        Self {
            snapshots: ImmutableCache::new(super::scaled(SNAPSHOT_ENTRY_LIMIT, modifier)),
            lookups: ImmutableCache::new(small),
            state_keys: ImmutableCache::new(small),
            facts: ImmutableCache::new(small),
            rooms: ImmutableCache::new(small),
        }
    }

    /// Entries held by each cache, by name.
    pub fn sizes(&self) -> [(&'static str, usize); 5] {
        [
            ("state snapshots", self.snapshots.len()),
            ("state lookups", self.lookups.len()),
            ("state keys", self.state_keys.len()),
            ("visibility facts", self.facts.len()),
            ("room records", self.rooms.len()),
        ]
    }

    /// The snapshot `id`, from the cache or read through `reader`.
    pub fn snapshot(
        &self,
        reader: &(impl Read + ?Sized),
        id: u64,
    ) -> Result<Option<Arc<Snapshot>>> {
        if let Some(snapshot) = self.snapshots.get(&id) {
            return Ok(Some(snapshot));
        }
        let Some(snapshot) = SNAPSHOTS_TABLE.get(reader, &id)? else {
            return Ok(None);
        };
        let snapshot = Arc::new(snapshot);
        self.snapshots.insert(id, Arc::clone(&snapshot), snapshot.entries.len());
        Ok(Some(snapshot))
    }

    /// The record of the room `room_id`, from the cache or read through `reader` (only
    /// rooms that exist are kept: one unknown now may be created later).
    pub fn room(&self, reader: &(impl Read + ?Sized), room_id: &str) -> Result<Option<RoomRecord>> {
        if let Some(record) = self.rooms.get(room_id) {
            return Ok(Some(RoomRecord::clone(&record)));
        }
        let Some(Json(record)) = ROOMS_TABLE.get(reader, &room_id.to_owned())? else {
            return Ok(None);
        };
        self.rooms.insert(room_id.to_owned(), Arc::new(record.clone()), 1);
        Ok(Some(record))
    }

    /// The event for `state_key` at `snapshot`, computing it with `walk` on a miss.
    pub fn lookup(
        &self,
        snapshot: u64,
        state_key: u64,
        walk: impl FnOnce() -> Result<Option<u64>>,
    ) -> Result<Option<u64>> {
        if let Some(found) = self.lookups.get(&(snapshot, state_key)) {
            return Ok(*found);
        }
        let found = walk()?;
        self.lookups.insert((snapshot, state_key), Arc::new(found), 1);
        Ok(found)
    }

    /// The short id of the interned state key `bytes`, computing it with `read` on a miss;
    /// only ids that exist are kept.
    pub fn state_key(
        &self,
        bytes: &[u8],
        read: impl FnOnce() -> Result<Option<u64>>,
    ) -> Result<Option<u64>> {
        if let Some(id) = self.state_keys.get(bytes) {
            return Ok(Some(*id));
        }
        let id = read()?;
        if let Some(id) = id {
            self.state_keys.insert(bytes.to_vec(), Arc::new(id), 1);
        }
        Ok(id)
    }

    /// The fact recorded for event `short`, computing it with `read` on a miss.
    pub fn fact(
        &self,
        short: u64,
        read: impl FnOnce() -> Result<Option<String>>,
    ) -> Result<Arc<Option<String>>> {
        if let Some(fact) = self.facts.get(&short) {
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
        assert_eq!(caches.lookup(2, 7, || Ok(Some(9))).expect("walk"), Some(9));
        assert_eq!(caches.lookup(2, 7, || panic!("walked again")).expect("cached"), Some(9));
        // A state key not interned yet is asked again next time; one that exists is kept.
        assert_eq!(caches.state_key(b"k", || Ok(None)).expect("read"), None);
        assert_eq!(caches.state_key(b"k", || Ok(Some(3))).expect("read"), Some(3));
        assert_eq!(caches.state_key(b"k", || panic!("read again")).expect("cached"), Some(3));
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
        assert!(cache.get(&3).is_some() && cache.get(&1).is_none());
        assert!(!cache.is_empty());
    }
}
