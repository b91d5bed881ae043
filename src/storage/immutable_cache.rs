//! Caches of rows that never change once written, shared by every reader: a cached value is
//! always right, so the only policy is a bound on size (crude: past it the cache starts over,
//! and whatever was dropped reloads from storage).
//!
//! - State snapshots: reading a room's state walks a chain of delta rows (the rooms domain
//!   bounds its length), and every /sync response that checks history visibility walks the
//!   same ones.
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
    CacheUsage, Read,
    codec::Json,
    rooms::{ROOMS_TABLE, RoomRecord, SNAPSHOTS_TABLE, Snapshot},
};
use crate::Result;

/// A bounded map from a key to an immutable value, each weighed when inserted. Values are
/// held inline: small ones (ids, flags) cost no allocation of their own, and large ones are
/// put behind an `Arc` by the caller so a hit only bumps a count.
pub struct ImmutableCache<K, V> {
    values: DashMap<K, V>,
    weight: AtomicUsize,
    limit: usize,
}

impl<K: Hash + Eq, V: Clone> ImmutableCache<K, V> {
    pub fn new(limit: usize) -> Self {
        Self { values: DashMap::new(), weight: AtomicUsize::new(0), limit }
    }

    pub fn get<Q: Hash + Eq + ?Sized>(&self, id: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.values.get(id).map(|value| value.clone())
    }

    /// Keeps `value` (of `weight` units) under `id`, starting over when the bound is passed.
    pub fn insert(&self, id: K, value: V, weight: usize) {
        let weight = weight.max(1);
        if self.weight.fetch_add(weight, Ordering::AcqRel) + weight > self.limit {
            self.values.clear();
            // A cleared map keeps its table; a cache that filled once would hold the
            // memory of a full one forever after.
            self.values.shrink_to_fit();
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

    /// The weight of the entries held (since the last start over).
    pub fn weight(&self) -> usize {
        self.weight.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Bytes of memory the snapshot cache holds, as [`snapshot_size`] estimates them.
const SNAPSHOT_BYTES_LIMIT: usize = 4 * 1024 * 1024;

/// Bytes of memory each of the small caches (lookups, state keys, facts, room records) holds.
const SMALL_BYTES_LIMIT: usize = 8 * 1024 * 1024;

/// What any entry costs before its own contents: its slot in the map, with the table's share
/// of spare capacity. Weighing entries by count instead let 50,000 one-entry snapshot deltas
/// of a 10,000-room server take 6 MB under a bound meant as 4 MiB.
const ENTRY_BYTES: usize = 48;

/// The memory a cached snapshot takes: its map slot, the `Arc` around it and its entries.
fn snapshot_size(snapshot: &Snapshot) -> usize {
    ENTRY_BYTES
        + size_of::<Snapshot>()
        + 2 * size_of::<usize>()
        + snapshot.entries.len() * size_of::<(u64, u64)>()
}

/// The immutable caches a storage keeps.
pub struct ImmutableCaches {
    snapshots: ImmutableCache<u64, Arc<Snapshot>>,
    lookups: ImmutableCache<(u64, u64), Option<u64>>,
    state_keys: ImmutableCache<Box<[u8]>, u64>,
    facts: ImmutableCache<u64, Option<Box<str>>>,
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
        let small = super::scaled(SMALL_BYTES_LIMIT, modifier);
        Self {
            snapshots: ImmutableCache::new(super::scaled(SNAPSHOT_BYTES_LIMIT, modifier)),
            lookups: ImmutableCache::new(small),
            state_keys: ImmutableCache::new(small),
            facts: ImmutableCache::new(small),
            rooms: ImmutableCache::new(small),
        }
    }

    /// What each cache holds.
    pub fn usage(&self) -> [CacheUsage; 5] {
        fn of<K: Hash + Eq, V: Clone>(
            label: &'static str,
            description: &'static str,
            cache: &ImmutableCache<K, V>,
        ) -> CacheUsage {
            CacheUsage { label, description, entries: cache.len(), bytes: Some(cache.weight()) }
        }
        [
            of("state_snapshots", "state snapshots", &self.snapshots),
            of("state_lookups", "state lookups", &self.lookups),
            of("state_keys", "state keys", &self.state_keys),
            of("visibility_facts", "visibility facts", &self.facts),
            of("room_records", "room records", &self.rooms),
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
        crate::memory::long_lived(|| {
            let Some(snapshot) = SNAPSHOTS_TABLE.get(reader, &id)? else {
                return Ok(None);
            };
            let snapshot = Arc::new(snapshot);
            self.snapshots.insert(id, Arc::clone(&snapshot), snapshot_size(&snapshot));
            Ok(Some(snapshot))
        })
    }

    /// The record of the room `room_id`, from the cache or read through `reader` (only
    /// rooms that exist are kept: one unknown now may be created later).
    pub fn room(&self, reader: &(impl Read + ?Sized), room_id: &str) -> Result<Option<RoomRecord>> {
        if let Some(record) = self.rooms.get(room_id) {
            return Ok(Some(record));
        }
        let Some(Json(record)) = ROOMS_TABLE.get(reader, &room_id.to_owned())? else {
            return Ok(None);
        };
        let size = ENTRY_BYTES
            + size_of::<RoomRecord>()
            + room_id.len()
            + record.creator.as_str().len()
            + record.version.as_str().len();
        crate::memory::long_lived(|| self.rooms.insert(room_id.to_owned(), record.clone(), size));
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
            return Ok(found);
        }
        let found = walk()?;
        crate::memory::long_lived(|| {
            self.lookups.insert((snapshot, state_key), found, ENTRY_BYTES);
        });
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
            return Ok(Some(id));
        }
        let id = read()?;
        if let Some(id) = id {
            crate::memory::long_lived(|| {
                self.state_keys.insert(bytes.into(), id, ENTRY_BYTES + bytes.len());
            });
        }
        Ok(id)
    }

    /// The fact recorded for event `short`, computing it with `read` on a miss.
    pub fn fact(
        &self,
        short: u64,
        read: impl FnOnce() -> Result<Option<String>>,
    ) -> Result<Option<String>> {
        if let Some(fact) = self.facts.get(&short) {
            return Ok(fact.map(String::from));
        }
        let fact = read()?;
        crate::memory::long_lived(|| {
            self.facts.insert(
                short,
                fact.as_deref().map(Box::from),
                ENTRY_BYTES + fact.as_ref().map_or(0, String::len),
            );
        });
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

    #[tokio::test]
    async fn snapshots_are_weighed_by_their_memory_not_their_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (storage, _) = Storage::open(&EngineOptions::for_path(dir.path())).expect("open");
        let delta = |id| Snapshot { parent: Some(id), entries: vec![(7, id)] };
        let mut batch = Batch::new();
        for id in 1..=40 {
            SNAPSHOTS_TABLE.put(&mut batch, &id, &delta(id));
        }
        storage.writer().commit(batch).await.expect("commit");

        // Room for ten one-entry deltas: by entry count it would have held hundreds.
        let room_for_ten = (10 * snapshot_size(&delta(1))) as f64;
        let caches = ImmutableCaches::scaled(room_for_ten / SNAPSHOT_BYTES_LIMIT as f64);
        for id in 1..=40 {
            assert!(caches.snapshot(storage.engine(), id).expect("read").is_some());
            assert!(caches.snapshots.len() <= 10, "{} cached", caches.snapshots.len());
        }
        storage.close().await;
    }

    #[test]
    fn a_full_cache_starts_over() {
        let cache = ImmutableCache::new(10);
        cache.insert(1, (), 6);
        cache.insert(2, (), 3);
        assert_eq!(cache.len(), 2);
        // 6 + 3 + 4 passes the bound of 10: only the newest value stays.
        cache.insert(3, (), 4);
        assert_eq!(cache.len(), 1);
        assert!(cache.get(&3).is_some() && cache.get(&1).is_none());
        assert!(!cache.is_empty());
    }

    #[test]
    fn starting_over_gives_back_the_table() {
        let cache = ImmutableCache::new(4096);
        for id in 0..4096 {
            cache.insert(id, (), 1);
        }
        assert!(cache.values.capacity() >= 4096);
        cache.insert(4096, (), 1);
        assert_eq!(cache.len(), 1);
        assert!(cache.values.capacity() < 256, "{}", cache.values.capacity());
    }
}
