//! The SyncHub: wakes exactly the waiting /sync requests whose view changed.
//!
//! A waiting request registers one waiter under its user and under each room it is joined
//! to. A commit wakes the waiters of the rooms or users it touched, and only those: an idle
//! long poll costs a registration and no CPU; a burst of events to a room wakes each waiting
//! member once (a waiter holds at most one pending wake-up). Nothing is ever iterated per
//! room member on the send path: only waiters, which exist only while requests wait.
//!
//! It also keeps a sender's own syncs behind the answer to their send. A client matches the
//! event its /sync brings back to the send it is waiting on by transaction id, and
//! matrix-js-sdk breaks when the event comes first (a thread reply's send never settles). So
//! a send [`hold`](SyncHub::hold)s its sender's view at the position committed before it
//! started, until the answer has been sent; then the sender's syncs are woken. Other
//! users' syncs are not held, and the send itself waits for nothing.

use std::sync::{Arc, Weak};

use dashmap::DashMap;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use tokio::sync::Notify;

use crate::rooms::commits::{CommitListener, Pending, RoomCommit, done};

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
    /// Per user, the positions their unanswered sends hold their syncs at.
    holds: DashMap<OwnedUserId, Vec<u64>>,
}

/// Keeps a user's syncs at or below a position until dropped (see [`SyncHub::hold`]).
pub struct Hold {
    hub: Arc<SyncHub>,
    user: OwnedUserId,
    position: u64,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.hub.release(&self.user, self.position);
    }
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

    /// Holds `user`'s syncs at `committed` (the committed position before their send
    /// started) until the returned guard is dropped, once the send's answer is out.
    pub fn hold(self: &Arc<Self>, user: &UserId, committed: u64) -> Hold {
        self.holds.entry(user.to_owned()).or_default().push(committed);
        Hold { hub: Arc::clone(self), user: user.to_owned(), position: committed }
    }

    /// Ends one hold of `user` at `position`, and wakes their syncs: what it hid is news.
    fn release(&self, user: &UserId, position: u64) {
        if let dashmap::Entry::Occupied(mut entry) = self.holds.entry(user.to_owned()) {
            let positions = entry.get_mut();
            if let Some(at) = positions.iter().position(|held| *held == position) {
                positions.swap_remove(at);
            }
            if positions.is_empty() {
                entry.remove();
            }
        }
        self.user_changed(user);
    }

    /// How far `user`'s sync may read, given the committed position it read first: that
    /// position, or the lowest hold below it. (Reading the position before the holds means a
    /// send that starts in between commits above it.)
    pub fn visible_to(&self, user: &UserId, committed: u64) -> u64 {
        self.holds
            .get(user)
            .and_then(|positions| positions.iter().min().copied())
            .map_or(committed, |held| held.min(committed))
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

/// A room's commit wakes the syncs waiting on the room, and those of the users whose
/// membership it changed: invites and joins reach users not yet waiting on the room.
impl CommitListener for SyncHub {
    fn committed<'a>(&'a self, commit: &'a RoomCommit) -> Pending<'a> {
        self.room_changed(&commit.room_id);
        for member in &commit.members {
            self.user_changed(member);
        }
        done()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_wake_before_waiting_is_not_lost() {
        let hub = SyncHub::default();
        let room: OwnedRoomId = ruma::room_id!("!r:x").to_owned();
        let registration = hub.register(ruma::user_id!("@a:x"), std::slice::from_ref(&room));
        hub.room_changed(&room);
        tokio::time::timeout(Duration::from_secs(1), registration.waiter().woken())
            .await
            .expect("woken");
    }

    #[tokio::test]
    async fn a_hold_caps_its_user_until_dropped_and_then_wakes_them() {
        let hub = Arc::new(SyncHub::default());
        let sender = ruma::user_id!("@a:x");
        let other = ruma::user_id!("@b:x");
        let first = hub.hold(sender, 10);
        let second = hub.hold(sender, 12);
        assert_eq!(hub.visible_to(sender, 15), 10);
        assert_eq!(hub.visible_to(other, 15), 15);
        let waiting = hub.register(sender, &[]);
        drop(first);
        assert_eq!(hub.visible_to(sender, 15), 12);
        tokio::time::timeout(Duration::from_secs(1), waiting.waiter().woken())
            .await
            .expect("woken by the release");
        drop(second);
        assert_eq!(hub.visible_to(sender, 15), 15);
        assert!(hub.holds.is_empty());
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
            tokio::time::timeout(Duration::from_millis(50), outsider.waiter().woken())
                .await
                .is_err()
        );
        tokio::time::timeout(Duration::from_secs(1), member.waiter().woken()).await.expect("woken");
        drop(member);
        hub.prune();
        assert!(hub.by_room.is_empty());
        assert_eq!(hub.by_room.capacity(), 0);
    }
}
