//! What follows a room's commit: the listeners that subscribe to committed events. The room
//! actor hands each commit, after it is durable and after the sender has its answer, to every
//! listener in the order they subscribed: the SyncHub (wakes the syncs that can see it), the
//! pushers (deliver its notifications) and, from the admin front door, the admin room's
//! command hook. A listener must not block the room: long work spawns a task.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, PoisonError, RwLock},
    task::{Context, Poll},
};

use ruma::{OwnedRoomId, OwnedUserId};

use super::Pdu;

/// One event of a commit, at its stream position.
#[derive(Debug, Clone)]
pub struct CommittedEvent {
    pub pdu: Arc<Pdu>,
    pub position: u64,
}

/// One commit of a room: its events in order, and who it concerns.
#[derive(Debug, Clone)]
pub struct RoomCommit {
    pub room_id: OwnedRoomId,
    pub events: Vec<CommittedEvent>,
    /// Users whose membership changed.
    pub members: Vec<OwnedUserId>,
    /// Local users the events notified (their pushers have work).
    pub notified: Vec<OwnedUserId>,
}

/// The work a listener does for one commit, awaited in the room's actor.
pub type Pending<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Something that acts on a room's committed events.
pub trait CommitListener: Send + Sync + 'static {
    /// Runs in the room's actor after the commit and after the reply, so the room's next
    /// message waits for it: return [`done`] when there is nothing to await, and spawn long
    /// work.
    fn committed<'a>(&'a self, commit: &'a RoomCommit) -> Pending<'a>;
}

/// A future that is ready at once. It is zero-sized, so boxing it does not allocate: a
/// listener with nothing to await costs nothing per commit.
struct Done;

impl Future for Done {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

/// What a listener returns when it has nothing to await.
pub fn done<'a>() -> Pending<'a> {
    Box::pin(Done)
}

/// The subscribed listeners. Subscribing copies the list (it happens at startup); each
/// commit takes one read lock and one reference count.
#[derive(Default)]
pub struct CommitListeners(RwLock<Arc<[Arc<dyn CommitListener>]>>);

impl CommitListeners {
    /// Adds a listener after those already subscribed.
    pub fn subscribe(&self, listener: Arc<dyn CommitListener>) {
        let mut current = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let mut listeners = current.to_vec();
        listeners.push(listener);
        *current = listeners.into();
    }

    /// The listeners subscribed now, in order.
    pub fn current(&self) -> Arc<[Arc<dyn CommitListener>]> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Hands `commit` to each listener in turn.
    pub async fn notify(&self, commit: &RoomCommit) {
        for listener in self.current().iter() {
            listener.committed(commit).await;
        }
    }
}
