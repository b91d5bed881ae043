//! The shutdown signal: one `watch` channel that the server triggers when it stops, and that
//! listeners, long polls and background tasks wait on. A leaf, so that `Services` and the
//! front doors can hold it without importing the `Server` that owns them.

use std::sync::Arc;

use tokio::sync::watch;

/// Tells everything that the server is stopping.
#[derive(Clone, Debug)]
pub struct Shutdown {
    signal: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self { signal: Arc::new(watch::channel(false).0) }
    }

    pub fn trigger(&self) {
        self.signal.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.signal.borrow()
    }

    /// Resolves once shutdown has been triggered.
    pub async fn wait(self) {
        let mut receiver = self.signal.subscribe();
        let _ = receiver.wait_for(|stopping| *stopping).await;
    }
}
