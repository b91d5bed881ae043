//! The actor runtime (layer 2): a root supervisor per server and the keyed-actor pattern
//! (`keyed.rs`) that the domains build their actors on, plus the containment of panics
//! (`contain.rs`) and supervised background tasks (`tasks.rs`). It knows no domain: the
//! actor kinds live with what they own (`accounts::actor`, `rooms::actor`, `presence`,
//! `push::pushers`, `media::owner`, `federation::sender::destination`), and
//! [`ActorSystem::kinds`] lists the ones a running server started.
//!
//! Actor names carry the server's namespace (`<server_name>#<n>/<kind>/<key>#<seq>`), so
//! several servers can share one process, as the integration tests do.

pub mod contain;
pub mod keyed;
pub mod tasks;

use std::{
    sync::{Mutex, PoisonError},
    time::Duration,
};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

pub use self::keyed::{Behaviour, Context, Limits, Registry, Reply};
use crate::{Error, Result, time::Time};

/// The root of one server's supervision tree.
pub struct ActorSystem {
    namespace: String,
    root: ActorRef<()>,
    time: Time,
    /// The kinds started so far, in start order.
    kinds: Mutex<Vec<&'static str>>,
}

impl ActorSystem {
    /// Starts the root supervisor; actors' timers run on `time`.
    pub async fn start(namespace: String, time: Time) -> Result<Self> {
        let (root, _) =
            Actor::spawn(Some(format!("{namespace}/root")), RootSupervisor, ()).await.map_err(
                |error| Error::internal(format!("cannot start the root supervisor: {error}")),
            )?;
        Ok(Self { namespace, root, time, kinds: Mutex::default() })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn root(&self) -> ActorCell {
        self.root.get_cell()
    }

    /// Starts a registry (and its supervisor) for one kind of keyed actor.
    pub async fn registry<B: Behaviour>(
        &self,
        behaviour: B,
        limits: Limits,
    ) -> Result<Registry<B>> {
        let registry =
            Registry::start(behaviour, &self.namespace, limits, self.time.clone(), self.root())
                .await?;
        self.kinds.lock().unwrap_or_else(PoisonError::into_inner).push(B::KIND);
        Ok(registry)
    }

    /// The kinds of keyed actor this server started a registry for (`user`, `room`, ...), in
    /// start order.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.kinds.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Stops whatever is still running under the root, then the root itself.
    pub async fn shutdown(&self, timeout: Duration) {
        self.root.get_cell().drain_children_and_wait(Some(timeout)).await;
        let _ = self.root.stop_and_wait(Some("shutdown".to_owned()), Some(timeout)).await;
    }
}

/// Holds the kinds' supervisors. It never stops because a child did.
struct RootSupervisor;

impl Actor for RootSupervisor {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        event: SupervisionEvent,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, error) = event {
            tracing::error!(actor = ?cell.get_name(), %error, "a supervisor failed");
        }
        Ok(())
    }
}
