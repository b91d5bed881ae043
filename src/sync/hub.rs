//! The SyncHub: wakes exactly the waiting /sync requests whose view changed.
//!
//! A waiting request registers one waiter under its user and under each room it is joined
//! to. A commit wakes the waiters of the rooms or users it touched, and only those: an idle
//! long poll costs a registration and no CPU; a burst of events to a room wakes each waiting
//! member once (a waiter holds at most one pending wake-up). Nothing is ever iterated per
//! room member on the send path: only waiters, which exist only while requests wait.

use std::sync::{Arc, Weak};

use dashmap::DashMap;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use tokio::sync::Notify;

/// One waiting request.
#[derive(Default)]
pub struct Waiter {
    notify: Notify,
}

impl Waiter {
    /// Resolves once the waiter has been woken (immediately if it already was).
    pub async fn woken(&self) {
        self.notify.notified().await;
    }
}

/// Registration of a waiter; unregisters lazily when dropped (dead entries are pruned).
pub struct Registration {
    waiter: Arc<Waiter>,
}

impl Registration {
    pub fn waiter(&self) -> &Waiter {
        &self.waiter
    }
}

#[derive(Default)]
pub struct SyncHub {
    by_user: DashMap<OwnedUserId, Vec<Weak<Waiter>>>,
    by_room: DashMap<OwnedRoomId, Vec<Weak<Waiter>>>,
}

fn wake(
    entries: Option<dashmap::mapref::one::RefMut<'_, impl Eq + std::hash::Hash, Vec<Weak<Waiter>>>>,
) -> usize {
    let Some(mut entries) = entries else { return 0 };
    let mut woken = 0;
    entries.retain(|waiter| match waiter.upgrade() {
        Some(waiter) => {
            waiter.notify.notify_one();
            woken += 1;
            true
        }
        None => false,
    });
    woken
}

impl SyncHub {
    /// Registers a waiter for `user` and their `rooms` before the caller looks for news, so
    /// that nothing committed in between is missed.
    pub fn register(&self, user: &UserId, rooms: &[OwnedRoomId]) -> Registration {
        let waiter = Arc::new(Waiter::default());
        let weak = Arc::downgrade(&waiter);
        let mut entries = self.by_user.entry(user.to_owned()).or_default();
        entries.retain(|waiter| waiter.strong_count() > 0);
        entries.push(weak.clone());
        drop(entries);
        for room in rooms {
            let mut entries = self.by_room.entry(room.clone()).or_default();
            entries.retain(|waiter| waiter.strong_count() > 0);
            entries.push(weak.clone());
        }
        metrics::gauge!("tuwunel_sync_waiting").increment(1.0);
        Registration { waiter }
    }

    /// Wakes the requests waiting on `room`.
    pub fn room_changed(&self, room: &RoomId) {
        let woken = wake(self.by_room.get_mut(room));
        metrics::histogram!("tuwunel_sync_wakeups_per_commit").record(woken as f64);
    }

    /// Wakes the requests of `user`.
    pub fn user_changed(&self, user: &UserId) {
        wake(self.by_user.get_mut(user));
    }

    /// Drops empty entries (called from time to time so the maps do not grow), and gives
    /// back the tables they leave empty: members who long-polled across 10,000 rooms would
    /// otherwise leave a table sized for all of them.
    pub fn prune(&self) {
        self.by_user.retain(|_, entries| {
            entries.retain(|waiter| waiter.strong_count() > 0);
            !entries.is_empty()
        });
        self.by_room.retain(|_, entries| {
            entries.retain(|waiter| waiter.strong_count() > 0);
            !entries.is_empty()
        });
        self.by_user.shrink_to_fit();
        self.by_room.shrink_to_fit();
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        metrics::gauge!("tuwunel_sync_waiting").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_before_waiting_is_not_lost() {
        let hub = SyncHub::default();
        let room: OwnedRoomId = ruma::room_id!("!r:x").to_owned();
        let registration = hub.register(ruma::user_id!("@a:x"), std::slice::from_ref(&room));
        hub.room_changed(&room);
        tokio::time::timeout(std::time::Duration::from_secs(1), registration.waiter().woken())
            .await
            .expect("woken");
    }

    #[tokio::test]
    async fn only_the_touched_users_wake() {
        let hub = SyncHub::default();
        let room: OwnedRoomId = ruma::room_id!("!r:x").to_owned();
        let member = hub.register(ruma::user_id!("@a:x"), std::slice::from_ref(&room));
        let outsider = hub.register(ruma::user_id!("@b:x"), &[]);
        hub.room_changed(&room);
        hub.room_changed(&room);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), outsider.waiter().woken())
                .await
                .is_err()
        );
        tokio::time::timeout(std::time::Duration::from_secs(1), member.waiter().woken())
            .await
            .expect("woken");
        drop(member);
        hub.prune();
        assert!(hub.by_room.is_empty());
        assert_eq!(hub.by_room.capacity(), 0);
    }
}
