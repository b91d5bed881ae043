//! Parsed events by short id, shared by every reader.
//!
//! An event row changes only when a redaction rewrites it, so the cache is right except in
//! the moment between such a commit and [`EventCache::rewritten`]. A reader that loaded the
//! old row just before the commit could otherwise put it back after the rewrite was
//! announced; a generation counter catches that: a loader whose generation moved while it
//! loaded takes its insertion out again.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use super::immutable_cache::ImmutableCache;
use crate::{Result, rooms::Pdu};

/// Bytes of stored event JSON the cache holds before it starts over (parsed, about three
/// times that in memory).
const EVENT_BYTES_LIMIT: usize = 4 * 1024 * 1024;

pub struct EventCache {
    events: ImmutableCache<u64, Pdu>,
    generation: AtomicU64,
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
        }
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.len() == 0
    }
}

impl EventCache {
    /// The event `short`, from the cache or loaded (with its stored size) by `load`.
    pub fn get(
        &self,
        short: u64,
        load: impl FnOnce() -> Result<Option<(Pdu, usize)>>,
    ) -> Result<Option<Arc<Pdu>>> {
        if let Some(pdu) = self.events.get(&short) {
            return Ok(Some(pdu));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let Some((pdu, size)) = load()? else {
            return Ok(None);
        };
        let pdu = Arc::new(pdu);
        self.events.insert(short, Arc::clone(&pdu), size);
        if self.generation.load(Ordering::SeqCst) != generation {
            self.events.remove(&short);
        }
        Ok(Some(pdu))
    }

    /// Called after a commit that rewrote the stored events `shorts`.
    pub fn rewritten(&self, shorts: &[u64]) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for short in shorts {
            self.events.remove(short);
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
        cache.rewritten(&[1]);
        let after = cache.get(1, || Ok(Some((event("two"), 10)))).expect("load").expect("found");
        assert_eq!(body(&after).as_deref(), Some("two"));
        assert!(cache.get(2, || Ok(None)).expect("load").is_none());
    }

    #[test]
    fn a_load_that_raced_a_rewrite_is_not_kept() {
        let cache = EventCache::default();
        // The rewrite is announced while the old row is being loaded.
        let stale = cache
            .get(1, || {
                cache.rewritten(&[1]);
                Ok(Some((event("old"), 10)))
            })
            .expect("load")
            .expect("found");
        assert_eq!(body(&stale).as_deref(), Some("old"));
        let fresh = cache.get(1, || Ok(Some((event("new"), 10)))).expect("load").expect("found");
        assert_eq!(body(&fresh).as_deref(), Some("new"));
    }
}
