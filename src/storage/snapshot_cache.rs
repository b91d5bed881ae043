//! Decoded state snapshots shared by every reader. A snapshot row never changes once it is
//! written, so a cached one is always right; reading a room's state walks up to
//! [`crate::rooms::state::FULL_EVERY`] deltas, and every /sync response that checks history
//! visibility walks the same ones, so they are worth keeping decoded.

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

/// State entries held before the cache starts over (16 bytes each, plus the map's share).
const ENTRY_LIMIT: usize = 256 * 1024;

#[derive(Default)]
pub struct SnapshotCache {
    snapshots: DashMap<u64, Arc<Snapshot>>,
    entries: AtomicUsize,
}

impl SnapshotCache {
    /// The snapshot `id`, from the cache or read through `reader`.
    pub fn get(&self, reader: &(impl Read + ?Sized), id: u64) -> Result<Option<Arc<Snapshot>>> {
        if let Some(snapshot) = self.snapshots.get(&id) {
            return Ok(Some(Arc::clone(&snapshot)));
        }
        let Some(snapshot) = SNAPSHOTS_TABLE.get(reader, &id)? else {
            return Ok(None);
        };
        let snapshot = Arc::new(snapshot);
        let size = snapshot.entries.len().max(1);
        // A crude bound instead of an LRU: whatever is dropped reloads from storage.
        if self.entries.fetch_add(size, Ordering::AcqRel) + size > ENTRY_LIMIT {
            self.snapshots.clear();
            self.entries.store(size, Ordering::Release);
        }
        self.snapshots.insert(id, Arc::clone(&snapshot));
        Ok(Some(snapshot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Batch, EngineOptions, Storage};

    #[tokio::test]
    async fn cached_snapshots_match_storage_and_stay_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (storage, _) = Storage::open(&EngineOptions::for_path(dir.path())).expect("open");
        let mut batch = Batch::new();
        let big = Snapshot { parent: None, entries: (0..200_000).map(|key| (key, key)).collect() };
        SNAPSHOTS_TABLE.put(&mut batch, &1, &big);
        SNAPSHOTS_TABLE.put(&mut batch, &2, &Snapshot { parent: Some(1), entries: vec![(7, 9)] });
        SNAPSHOTS_TABLE.put(&mut batch, &3, &big);
        storage.writer().commit(batch).await.expect("commit");

        let cache = SnapshotCache::default();
        let delta = cache.get(storage.engine(), 2).expect("read").expect("present");
        assert_eq!((delta.parent, delta.entries.clone()), (Some(1), vec![(7, 9)]));
        assert!(cache.get(storage.engine(), 99).expect("read").is_none());
        cache.get(storage.engine(), 1).expect("read").expect("present");
        // The second big snapshot pushes the total past the bound: the cache starts over.
        cache.get(storage.engine(), 3).expect("read").expect("present");
        assert!(cache.entries.load(Ordering::Acquire) <= ENTRY_LIMIT);
        assert_eq!(cache.snapshots.len(), 1);
        assert_eq!(
            cache.get(storage.engine(), 2).expect("read").expect("present").entries,
            vec![(7, 9)]
        );
        storage.close().await;
    }
}
