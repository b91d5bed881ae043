//! What the senders tell the rest of the server about each destination: its queue depth, its
//! transactions, its failures and backoff. Kept in one shared map (read by the admin
//! `federation destinations` command) and mirrored in per-destination metrics.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use ruma::{OwnedServerName, ServerName};

/// Where a destination's sender is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing to send, or waiting for its next message.
    Idle,
    /// A transaction is on its way.
    Sending,
    /// The last attempt failed; the next one is due at this instant.
    Backoff(Instant),
}

/// One destination as last seen by its actor and the fan-out.
#[derive(Debug, Clone)]
pub struct DestinationStatus {
    pub phase: Phase,
    /// Entries in its queue (an estimate between the actor's counts: the fan-out adds, the
    /// actor subtracts what the server accepted).
    pub queued: u64,
    /// Transactions the server accepted since this server started.
    pub sent: u64,
    /// Attempts that failed since this server started.
    pub failed: u64,
    /// Consecutive failures now.
    pub failures: u32,
    pub last_error: Option<String>,
}

impl Default for DestinationStatus {
    fn default() -> Self {
        Self { phase: Phase::Idle, queued: 0, sent: 0, failed: 0, failures: 0, last_error: None }
    }
}

/// Every destination's status, by server name.
#[derive(Default)]
pub struct Statuses {
    map: DashMap<OwnedServerName, DestinationStatus>,
}

impl Statuses {
    /// Changes `server`'s status and refreshes its metrics.
    pub fn update(&self, server: &ServerName, change: impl FnOnce(&mut DestinationStatus)) {
        let mut entry = self.map.entry(server.to_owned()).or_default();
        change(&mut entry);
        let label = server.to_string();
        metrics::gauge!("tuwunel_federation_destination_queued", "destination" => label.clone())
            .set(entry.queued as f64);
        metrics::gauge!("tuwunel_federation_destination_failures", "destination" => label.clone())
            .set(f64::from(entry.failures));
        let backoff = match entry.phase {
            Phase::Backoff(until) => until.saturating_duration_since(Instant::now()),
            _ => Duration::ZERO,
        };
        metrics::gauge!("tuwunel_federation_destination_backoff_seconds", "destination" => label)
            .set(backoff.as_secs_f64());
    }

    pub fn get(&self, server: &ServerName) -> Option<DestinationStatus> {
        self.map.get(server).map(|entry| entry.clone())
    }

    /// Whether `server`'s status is known.
    pub fn contains(&self, server: &ServerName) -> bool {
        self.map.contains_key(server)
    }

    /// Every destination with its status, by name.
    pub fn all(&self) -> Vec<(OwnedServerName, DestinationStatus)> {
        let mut all: Vec<_> =
            self.map.iter().map(|entry| (entry.key().clone(), entry.value().clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Forgets an idle destination with nothing queued and no failures (its actor
    /// passivated), so the map holds only servers worth showing.
    pub fn forget_if_idle(&self, server: &ServerName) {
        self.map.remove_if(server, |_, status| {
            status.phase == Phase::Idle && status.queued == 0 && status.failures == 0
        });
    }
}
