//! Single flight: concurrent requests for the same key (a server's keys, a server name's
//! resolution) share one piece of work instead of each starting its own.

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
}
