//! Parsed events by short id, shared by every reader.
//!
//! An event row changes only when a redaction rewrites it. The room actor brackets that
//! commit with [`EventCache::rewriting`]: while the guard lives, readers of those events go
//! to storage and keep nothing, and when it drops the old entries are gone. A reader that
//! began loading the old row before the bracket could still insert it afterwards; a
//! generation counter catches that: a loader whose generation moved while it loaded takes
//! its insertion out again.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use dashmap::DashSet;

use super::immutable_cache::ImmutableCache;
use crate::{Result, rooms::Pdu};

/// Bytes of memory (as [`Pdu::memory_size`] estimates them) the cache holds before it starts
/// over: about 9,000 events (a message of a few hundred bytes of JSON takes about 1.35 KB).
const EVENT_BYTES_LIMIT: usize = 12 * 1024 * 1024;

pub struct EventCache {
    events: ImmutableCache<u64, Arc<Pdu>>,
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

    /// The memory the held events take, as [`Pdu::memory_size`] estimates it.
    pub fn bytes(&self) -> usize {
        self.events.weight()
    }

    /// The event `short`, from the cache or loaded (with its size in memory) by `load`.
    pub fn get(
        &self,
        short: u64,
        load: impl FnOnce() -> Result<Option<(Pdu, usize)>>,
    ) -> Result<Option<Arc<Pdu>>> {
        if !self.rewriting.is_empty() && self.rewriting.contains(&short) {
            return Ok(load()?.map(|(pdu, _)| Arc::new(pdu)));
        }
        if let Some(pdu) = self.events.get(&short) {
            return Ok(Some(pdu));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let Some((pdu, size)) = crate::memory::long_lived(load)? else {
            return Ok(None);
        };
        let pdu = crate::memory::long_lived(|| {
            let pdu = Arc::new(pdu);
            self.events.insert(short, Arc::clone(&pdu), size);
            pdu
        });
        if self.generation.load(Ordering::SeqCst) != generation {
            self.events.remove(&short);
        }
        Ok(Some(pdu))
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

    fn event(body: &str) -> Pdu {
        let json = serde_json::json!({
            "event_id": "$e:example.org",
            "room_id": "!r:example.org",
            "sender": "@a:example.org",
            "type": "m.room.message",
            "origin_server_ts": 1,
            "content": { "body": body },
            "prev_events": [],
            "auth_events": [],
            "depth": 1,
        });
        Pdu::from_bytes(json.to_string().as_bytes()).expect("event")
    }

    fn body(pdu: &Pdu) -> Option<String> {
        pdu.content_str("body")
    }

    #[test]
    fn a_rewrite_replaces_the_cached_event() {
        let cache = EventCache::default();
        let first = cache.get(1, || Ok(Some((event("one"), 10)))).expect("load").expect("found");
        assert_eq!(body(&first).as_deref(), Some("one"));
        let again = cache.get(1, || panic!("loaded twice")).expect("cached").expect("found");
        assert_eq!(body(&again).as_deref(), Some("one"));
        let rewriting = cache.rewriting(vec![1]);
        // During the commit every read goes to storage, and nothing it loads is kept.
        let during = cache.get(1, || Ok(Some((event("two"), 10)))).expect("load").expect("found");
        assert_eq!(body(&during).as_deref(), Some("two"));
        let during = cache.get(1, || Ok(Some((event("three"), 10)))).expect("load").expect("found");
        assert_eq!(body(&during).as_deref(), Some("three"));
        drop(rewriting);
        let after = cache.get(1, || Ok(Some((event("four"), 10)))).expect("load").expect("found");
        assert_eq!(body(&after).as_deref(), Some("four"));
        let again = cache.get(1, || panic!("loaded twice")).expect("cached").expect("found");
        assert_eq!(body(&again).as_deref(), Some("four"));
        assert!(cache.get(2, || Ok(None)).expect("load").is_none());
    }

    #[test]
    fn a_load_that_raced_a_rewrite_is_not_kept() {
        let cache = EventCache::default();
        // The rewrite is announced while the old row is being loaded.
        let stale = cache
            .get(1, || {
                drop(cache.rewriting(vec![1]));
                Ok(Some((event("old"), 10)))
            })
            .expect("load")
            .expect("found");
        assert_eq!(body(&stale).as_deref(), Some("old"));
        let fresh = cache.get(1, || Ok(Some((event("new"), 10)))).expect("load").expect("found");
        assert_eq!(body(&fresh).as_deref(), Some("new"));
    }
}
