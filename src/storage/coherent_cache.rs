//! Caches of rows that change, kept exact for readers who need everything committed so far.
//!
//! A /sync reads the committed stream position first and then expects every read after it
//! to include all commits up to that position. A plain cache cannot promise that: between
//! a commit and the writer's invalidation a reader would get the old value, and a reader
//! that loaded just before the commit could put the old value back afterwards. So writers
//! bracket each commit that touches a key: [`CoherentCache::begin`] before the write is
//! submitted, and dropping the returned [`Writing`] guard after it finished (or failed).
//! While a key has a write in flight readers go to storage; a loaded value is kept only if
//! no write began or ended on the key while it was loading.

use std::{
    collections::BTreeMap,
    hash::Hash,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use dashmap::DashMap;

use super::{
    push::ThreadCounts,
    rooms::{MembershipRecord, RoomActivity},
};
use crate::Result;

struct Slot<V> {
    /// Writes begun and not yet ended.
    writing: u32,
    /// Bumped whenever a write begins or ends.
    generation: u64,
    value: Option<Arc<V>>,
    /// The value when the only write in flight began, for [`Writing::committed`].
    before: Option<Arc<V>>,
}

impl<V> Default for Slot<V> {
    fn default() -> Self {
        Self { writing: 0, generation: 0, value: None, before: None }
    }
}

/// Maps a key's value before a committed write to the value after it.
type Update<'a, K, V> = dyn Fn(&K, &V) -> V + 'a;

/// A cache of one value per key, exact as described in the module documentation.
pub struct CoherentCache<K: Hash + Eq, V> {
    slots: DashMap<K, Slot<V>>,
    /// Past this many keys, idle ones are dropped.
    limit: usize,
    /// Bumped when idle keys are dropped (with them the record of their writes).
    clearings: AtomicU64,
}

impl<K: Hash + Eq + Clone, V> CoherentCache<K, V> {
    pub fn new(limit: usize) -> Self {
        Self { slots: DashMap::new(), limit, clearings: AtomicU64::new(0) }
    }

    /// The value for `key`, from the cache when no write to it is in flight, else loaded.
    pub fn get(&self, key: &K, load: impl FnOnce() -> Result<V>) -> Result<Arc<V>> {
        let clearings = self.clearings.load(Ordering::SeqCst);
        let generation = match self.slots.get(key) {
            Some(slot) if slot.writing > 0 => return load().map(Arc::new),
            Some(slot) => match &slot.value {
                Some(value) => return Ok(Arc::clone(value)),
                None => Some(slot.generation),
            },
            None => None,
        };
        let value = crate::memory::long_lived(|| load().map(Arc::new))?;
        if self.slots.len() >= self.limit {
            self.clearings.fetch_add(1, Ordering::SeqCst);
            self.slots.retain(|_, slot| slot.writing > 0);
            // Without this the emptied table keeps the memory of a full one.
            self.slots.shrink_to_fit();
        }
        let mut slot = crate::memory::long_lived(|| self.slots.entry(key.clone()).or_default());
        // A slot that appeared since the look above was made by a write beginning.
        if slot.writing == 0
            && slot.generation == generation.unwrap_or(0)
            && self.clearings.load(Ordering::SeqCst) == clearings
        {
            slot.value = Some(Arc::clone(&value));
        }
        Ok(value)
    }

    /// Announces a write to `keys`; readers go to storage until the guard is dropped.
    pub fn begin(&self, keys: Vec<K>) -> Writing<'_, K, V> {
        for key in &keys {
            // The slot outlives the writer (a room actor, say) that announced it.
            let mut slot = crate::memory::long_lived(|| self.slots.entry(key.clone()).or_default());
            // Overlapping writes each lose the value they started from.
            slot.before = if slot.writing == 0 { slot.value.take() } else { None };
            slot.value = None;
            slot.writing += 1;
            slot.generation += 1;
        }
        Writing { cache: self, keys, ended: false }
    }

    /// Ends a write; with `update`, a key that had a value when the write began (and no other
    /// write overlapped) gets `update(key, value)`, the value the write left in storage.
    fn end(&self, keys: &[K], update: Option<&Update<'_, K, V>>) {
        for key in keys {
            if let Some(mut slot) = self.slots.get_mut(key) {
                slot.writing = slot.writing.saturating_sub(1);
                slot.generation += 1;
                let before = slot.before.take();
                slot.value = match (update, before) {
                    (Some(update), Some(before)) if slot.writing == 0 => {
                        Some(crate::memory::long_lived(|| Arc::new(update(key, &before))))
                    }
                    _ => None,
                };
            }
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// The coherent caches a storage keeps.
pub struct CoherentCaches {
    /// Every `user_rooms` row of a user: each /sync reads them, twice when it waits.
    pub memberships: CoherentCache<ruma::OwnedUserId, Vec<(ruma::OwnedRoomId, MembershipRecord)>>,
    /// A user's unread counts in a room, by thread: each /sync reads them for every room.
    pub unread_counts: CoherentCache<(ruma::OwnedUserId, u64), ThreadCounts>,
    /// A device's unclaimed one-time keys by algorithm and its unused fallback key
    /// algorithms: each /sync of the device reports both.
    pub key_supply: CoherentCache<(ruma::OwnedUserId, ruma::OwnedDeviceId), KeySupply>,
    /// Whether a device has to-device messages queued: each /sync of the device asks, and
    /// almost always the answer is no.
    pub to_device_queued: CoherentCache<(ruma::OwnedUserId, ruma::OwnedDeviceId), bool>,
    /// The users each user ignores: each /sync reads them.
    pub ignored_users: CoherentCache<ruma::OwnedUserId, std::collections::HashSet<String>>,
    /// Each room's newest event and bump positions, by short room id: sliding sync orders a
    /// user's rooms by them on every computation.
    pub room_activity: CoherentCache<u64, RoomActivity>,
}

/// One-time key counts by algorithm, and the algorithms with an unused fallback key.
pub type KeySupply = (BTreeMap<String, u64>, Vec<String>);

/// Users (or user and room pairs) whose cached values are kept.
const KEYS_LIMIT: usize = 64 * 1024;

impl Default for CoherentCaches {
    fn default() -> Self {
        Self::scaled(1.0)
    }
}

impl CoherentCaches {
    /// Caches whose bounds are scaled by the operator's cache modifier.
    pub fn scaled(modifier: f64) -> Self {
        let limit = super::scaled(KEYS_LIMIT, modifier);
        Self {
            memberships: CoherentCache::new(limit),
            unread_counts: CoherentCache::new(limit),
            key_supply: CoherentCache::new(limit),
            to_device_queued: CoherentCache::new(limit),
            ignored_users: CoherentCache::new(limit),
            room_activity: CoherentCache::new(limit),
        }
    }
}

/// A write in flight to some keys of a [`CoherentCache`]; ends when dropped.
pub struct Writing<'a, K: Hash + Eq + Clone, V> {
    cache: &'a CoherentCache<K, V>,
    keys: Vec<K>,
    ended: bool,
}

impl<K: Hash + Eq + Clone, V> Writing<'_, K, V> {
    /// Ends a write that committed, keeping for each key the value it left: `update` maps
    /// the value before the write to the one after (exactly what storage now holds).
    pub fn committed(mut self, update: impl Fn(&K, &V) -> V) {
        self.ended = true;
        self.cache.end(&self.keys, Some(&update));
    }
}

impl<K: Hash + Eq + Clone, V> Drop for Writing<'_, K, V> {
    fn drop(&mut self) {
        if !self.ended {
            self.cache.end(&self.keys, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_cached_until_a_write() {
        let cache: CoherentCache<u32, &str> = CoherentCache::new(100);
        assert_eq!(*cache.get(&1, || Ok("a")).expect("load"), "a");
        assert_eq!(*cache.get(&1, || panic!("loaded twice")).expect("cached"), "a");
        let writing = cache.begin(vec![1]);
        // During the write every read goes to storage, and nothing it loads is kept.
        assert_eq!(*cache.get(&1, || Ok("b")).expect("load"), "b");
        assert_eq!(*cache.get(&1, || Ok("c")).expect("load"), "c");
        drop(writing);
        assert_eq!(*cache.get(&1, || Ok("d")).expect("load"), "d");
        assert_eq!(*cache.get(&1, || panic!("loaded twice")).expect("cached"), "d");
    }

    #[test]
    fn a_load_that_overlapped_a_write_is_not_kept() {
        let cache: CoherentCache<u32, &str> = CoherentCache::new(100);
        // The write begins and ends while the old value is being loaded.
        let old = cache
            .get(&1, || {
                drop(cache.begin(vec![1]));
                Ok("old")
            })
            .expect("load");
        assert_eq!(*old, "old");
        assert_eq!(*cache.get(&1, || Ok("new")).expect("load"), "new");
        assert_eq!(*cache.get(&1, || panic!("loaded twice")).expect("cached"), "new");
        // Also for a key whose slot existed already.
        drop(cache.begin(vec![2]));
        let racing = cache
            .get(&2, || {
                drop(cache.begin(vec![2]));
                Ok("racing")
            })
            .expect("load");
        assert_eq!(*racing, "racing");
        assert_eq!(*cache.get(&2, || Ok("fresh")).expect("load"), "fresh");
    }

    #[test]
    fn a_committed_write_can_leave_its_value() {
        let cache: CoherentCache<u32, u32> = CoherentCache::new(100);
        cache.get(&1, || Ok(10)).expect("load");
        cache.begin(vec![1, 2]).committed(|_, before| before + 1);
        assert_eq!(*cache.get(&1, || panic!("loaded")).expect("updated"), 11);
        // A key with no value before the write is loaded afterwards.
        assert_eq!(*cache.get(&2, || Ok(5)).expect("load"), 5);
        // Overlapping writes, or a write that did not commit, leave nothing to update.
        let first = cache.begin(vec![1]);
        let second = cache.begin(vec![1]);
        second.committed(|_, before| before + 1);
        first.committed(|_, before| before + 1);
        assert_eq!(*cache.get(&1, || Ok(20)).expect("load"), 20);
        drop(cache.begin(vec![1]));
        assert_eq!(*cache.get(&1, || Ok(30)).expect("load"), 30);
    }

    #[test]
    fn a_full_cache_keeps_only_keys_being_written() {
        let cache: CoherentCache<u32, u32> = CoherentCache::new(2);
        let _writing = cache.begin(vec![9]);
        cache.get(&1, || Ok(1)).expect("load");
        cache.get(&2, || Ok(2)).expect("load");
        assert_eq!(cache.len(), 2);
        assert!(!cache.is_empty());
    }
}
