//! Parsed events by short id, shared by every reader.
//!
//! Storage knows nothing of what an event is: the cache holds whatever parsed form the
//! domain gives it (type-erased), weighed by the size in memory the loader reports, and a
//! reader asks for the type it expects.
//!
//! An event row changes only when a redaction rewrites it. The room actor brackets that
//! commit with [`EventCache::rewriting`]: while the guard lives, readers of those events go
//! to storage and keep nothing, and when it drops the old entries are gone. A reader that
//! began loading the old row before the bracket could still insert it afterwards; a
//! generation counter catches that: a loader whose generation moved while it loaded takes
//! its insertion out again.

use std::{
    any::Any,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use dashmap::DashSet;

use super::immutable_cache::ImmutableCache;
use crate::Result;

/// Bytes of memory (as the loaders estimate them) the cache holds before it starts over:
/// about 9,000 events (a message of a few hundred bytes of JSON takes about 1.35 KB).
const EVENT_BYTES_LIMIT: usize = 12 * 1024 * 1024;

/// A parsed event, of whatever type its loader produced.
type Entry = Arc<dyn Any + Send + Sync>;

pub struct EventCache {
    events: ImmutableCache<u64, Entry>,
    generation: AtomicU64,
    /// Events whose rewrite is being committed.
    rewriting: DashSet<u64>,
}

impl Default for EventCache {
    fn default() -> Self {
        Self::scaled(1.0)
    }
}

impl EventCache {
    /// A cache whose bound is scaled by the operator's cache modifier.
    pub fn scaled(modifier: f64) -> Self {
        Self {
            events: ImmutableCache::new(super::scaled(EVENT_BYTES_LIMIT, modifier)),
            generation: AtomicU64::new(0),
            rewriting: DashSet::new(),
        }
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The memory the held events take, as their loaders estimated it.
    pub fn bytes(&self) -> usize {
        self.events.weight()
    }

    /// The event `short` as a `T`, from the cache or loaded (with its size in memory) by
    /// `load`. An entry of another type counts as a miss and is replaced.
    pub fn get<T: Any + Send + Sync>(
        &self,
        short: u64,
        load: impl FnOnce() -> Result<Option<(T, usize)>>,
    ) -> Result<Option<Arc<T>>> {
        if !self.rewriting.is_empty() && self.rewriting.contains(&short) {
            return Ok(load()?.map(|(event, _)| Arc::new(event)));
        }
        if let Some(event) = self.events.get(&short).and_then(|entry| entry.downcast::<T>().ok()) {
            return Ok(Some(event));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let Some((event, size)) = crate::memory::long_lived(load)? else {
            return Ok(None);
        };
        let event = crate::memory::long_lived(|| {
            let event = Arc::new(event);
            self.events.insert(short, Arc::clone(&event) as Entry, size);
            event
        });
        if self.generation.load(Ordering::SeqCst) != generation {
            self.events.remove(&short);
        }
        Ok(Some(event))
    }

    /// Announces a commit that rewrites the stored events `shorts`; hold the guard until
    /// the commit finished (or failed).
    pub fn rewriting(&self, shorts: Vec<u64>) -> Rewriting<'_> {
        for short in &shorts {
            self.rewriting.insert(*short);
        }
        self.forget(&shorts);
        Rewriting { cache: self, shorts }
    }

    fn forget(&self, shorts: &[u64]) {
        if shorts.is_empty() {
            return;
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        for short in shorts {
            self.events.remove(short);
        }
    }
}

/// A rewrite of some events in flight; readers go to storage for them until it drops.
pub struct Rewriting<'a> {
    cache: &'a EventCache,
    shorts: Vec<u64>,
}

impl Drop for Rewriting<'_> {
    fn drop(&mut self) {
        self.cache.forget(&self.shorts);
        for short in &self.shorts {
            self.cache.rewriting.remove(short);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands in for a parsed event: storage tests cannot name the domain's type.
    #[derive(Debug, PartialEq)]
    struct Event(&'static str);

    fn body(event: &Event) -> &'static str {
        event.0
    }

    #[test]
    fn a_rewrite_replaces_the_cached_event() {
        let cache = EventCache::default();
        let first = cache.get(1, || Ok(Some((Event("one"), 10)))).expect("load").expect("found");
        assert_eq!(body(&first), "one");
        let again =
            cache.get::<Event>(1, || panic!("loaded twice")).expect("cached").expect("found");
        assert_eq!(body(&again), "one");
        let rewriting = cache.rewriting(vec![1]);
        // During the commit every read goes to storage, and nothing it loads is kept.
        let during = cache.get(1, || Ok(Some((Event("two"), 10)))).expect("load").expect("found");
        assert_eq!(body(&during), "two");
        let during = cache.get(1, || Ok(Some((Event("three"), 10)))).expect("load").expect("found");
        assert_eq!(body(&during), "three");
        drop(rewriting);
        let after = cache.get(1, || Ok(Some((Event("four"), 10)))).expect("load").expect("found");
        assert_eq!(body(&after), "four");
        let again =
            cache.get::<Event>(1, || panic!("loaded twice")).expect("cached").expect("found");
        assert_eq!(body(&again), "four");
        assert!(cache.get::<Event>(2, || Ok(None)).expect("load").is_none());
    }

    #[test]
    fn a_load_that_raced_a_rewrite_is_not_kept() {
        let cache = EventCache::default();
        // The rewrite is announced while the old row is being loaded.
        let stale = cache
            .get(1, || {
                drop(cache.rewriting(vec![1]));
                Ok(Some((Event("old"), 10)))
            })
            .expect("load")
            .expect("found");
        assert_eq!(body(&stale), "old");
        let fresh = cache.get(1, || Ok(Some((Event("new"), 10)))).expect("load").expect("found");
        assert_eq!(body(&fresh), "new");
    }

    #[test]
    fn an_entry_of_another_type_is_a_miss() {
        let cache = EventCache::default();
        cache.get(1, || Ok(Some((Event("event"), 10)))).expect("load").expect("found");
        let other = cache.get(1, || Ok(Some((7_u32, 4)))).expect("load").expect("found");
        assert_eq!(*other, 7);
        // The other type replaced the entry, and is now what a hit returns.
        let again = cache.get::<u32>(1, || panic!("loaded twice")).expect("cached").expect("found");
        assert_eq!(*again, 7);
        assert_eq!(cache.len(), 1);
    }
}
