//! Single flight: concurrent requests for the same key (a server's keys, a server name's
//! resolution) share one piece of work instead of each starting its own. And its sibling,
//! [`PerKeyLimit`]: at most so many pieces of work per key at once (another server's heavy
//! requests).

use std::{collections::HashMap, future::Future, hash::Hash, sync::Arc};

use tokio::sync::OnceCell;

/// Work in progress per key. The first caller runs the work; callers arriving while it runs
/// wait for its result. If the runner is cancelled, a waiter takes over the work.
pub struct SingleFlight<K, V> {
    running: std::sync::Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self { running: std::sync::Mutex::new(HashMap::new()) }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    /// The result of `work` for `key`, run once however many callers ask at the same time.
    /// A caller arriving after the work finished starts it again: results are the caller's
    /// to cache.
    pub async fn run<F, Fut>(&self, key: &K, work: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = {
            let mut running = self.running.lock().unwrap_or_else(|poison| poison.into_inner());
            Arc::clone(running.entry(key.clone()).or_default())
        };
        let value = cell.get_or_init(work).await.clone();
        let mut running = self.running.lock().unwrap_or_else(|poison| poison.into_inner());
        if running.get(key).is_some_and(|current| Arc::ptr_eq(current, &cell)) {
            running.remove(key);
        }
        value
    }

    /// Keys with work in progress.
    pub fn len(&self) -> usize {
        self.running.lock().unwrap_or_else(|poison| poison.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// At most `limit` pieces of work at once per key; a key with none running takes no memory.
pub struct PerKeyLimit<K> {
    limit: usize,
    running: std::sync::Mutex<HashMap<K, usize>>,
}

/// One running piece of work of a [`PerKeyLimit`], given back when dropped.
pub struct Slot<'a, K: Hash + Eq> {
    owner: &'a PerKeyLimit<K>,
    key: K,
}

impl<K: Hash + Eq + Clone> PerKeyLimit<K> {
    pub fn new(limit: usize) -> Self {
        Self { limit, running: std::sync::Mutex::new(HashMap::new()) }
    }

    /// A slot for `key`, or `None` while `limit` of its pieces of work run.
    pub fn try_enter(&self, key: &K) -> Option<Slot<'_, K>> {
        let mut running = self.running.lock().unwrap_or_else(|poison| poison.into_inner());
        let count = running.entry(key.clone()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Slot { owner: self, key: key.clone() })
    }

    /// How many keys have work running (for tests and metrics).
    pub fn busy_keys(&self) -> usize {
        self.running.lock().unwrap_or_else(|poison| poison.into_inner()).len()
    }
}

impl<K: Hash + Eq> Drop for Slot<'_, K> {
    fn drop(&mut self) {
        let mut running = self.owner.running.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(count) = running.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                running.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flight: Arc<SingleFlight<&str, usize>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (flight, runs, gate) = (Arc::clone(&flight), Arc::clone(&runs), Arc::clone(&gate));
            tasks.push(tokio::spawn(async move {
                flight
                    .run(&"key", || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        7
                    })
                    .await
            }));
        }
        // Every task has joined the flight once the work started and all are waiting.
        for _ in 0..1000 {
            if runs.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        for task in tasks {
            assert_eq!(task.await.expect("task"), 7);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(flight.is_empty());
    }

    #[test]
    fn a_per_key_limit_bounds_each_key_and_forgets_idle_ones() {
        let limit = PerKeyLimit::new(2);
        let first = limit.try_enter(&"a").expect("first");
        let second = limit.try_enter(&"a").expect("second");
        assert!(limit.try_enter(&"a").is_none(), "a third is refused");
        let other = limit.try_enter(&"b").expect("another key is not affected");
        drop(second);
        let again = limit.try_enter(&"a").expect("a slot was given back");
        drop((first, again, other));
        assert_eq!(limit.busy_keys(), 0, "nothing is kept for idle keys");
    }
}
