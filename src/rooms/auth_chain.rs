//! Auth chains (every event reachable from an event through `auth_events`) and the conflicted
//! state subgraph of state resolution v2.1, over stored events. Chains come from the
//! `auth_chains` table when a row exists and from a walk over the stored events otherwise.
//! Every walk is bounded: another server chooses the events, so a chain too large to walk is
//! an internal error for the caller (which drops what needed it), never an unbounded loop.

use std::collections::{HashMap, HashSet};

use ruma::EventId;

use crate::{
    Error, Result,
    storage::{
        Storage,
        dag::{AUTH_CHAINS_TABLE, AuthChain},
    },
};

/// Most events one walk visits. Large rooms' auth chains are a few events per member event
/// (create, power levels, join rules, the member's previous memberships), far below this.
pub const WALK_LIMIT: usize = 500_000;

fn too_large(limit: usize) -> Error {
    Error::internal(format!("an auth chain walk passed {limit} events"))
}

/// The short ids of `event`'s auth events. A stored event's auth events are stored too
/// (intake stores an event only with its auth events), so one missing is damage.
fn auth_events(storage: &Storage, event: u64) -> Result<Vec<u64>> {
    let pdu = super::shared_pdu(storage, event)?
        .ok_or_else(|| Error::internal(format!("event {event} of an auth chain is missing")))?;
    pdu.auth_events.iter().map(|id| short(storage, id)).collect()
}

fn short(storage: &Storage, event_id: &EventId) -> Result<u64> {
    super::event_short(storage, event_id)?
        .ok_or_else(|| Error::internal(format!("auth event {event_id} is not stored")))
}

/// Auth chains for one task (a resolution, an `event_auth` answer): read from their rows,
/// or walked and kept so that the caller's next batch can store them
/// ([`AuthChains::into_walked`]).
pub struct AuthChains<'a> {
    storage: &'a Storage,
    limit: usize,
    walked: HashMap<u64, AuthChain>,
}

impl<'a> AuthChains<'a> {
    pub fn new(storage: &'a Storage) -> Self {
        Self::with_limit(storage, WALK_LIMIT)
    }

    /// With a walk bound other than [`WALK_LIMIT`].
    pub fn with_limit(storage: &'a Storage, limit: usize) -> Self {
        Self { storage, limit, walked: HashMap::new() }
    }

    /// The auth chain of `event`, the event itself excluded.
    pub fn of(&mut self, event: u64) -> Result<AuthChain> {
        if let Some(chain) = self.stored(event)? {
            return Ok(chain);
        }
        let mut chain = HashSet::new();
        let mut stack = auth_events(self.storage, event)?;
        while let Some(next) = stack.pop() {
            if !chain.insert(next) {
                continue;
            }
            // A known chain stands for the whole walk below it.
            match self.stored(next)? {
                Some(below) => chain.extend(below.events().iter().copied()),
                None => stack.extend(auth_events(self.storage, next)?),
            }
            if chain.len() > self.limit {
                return Err(too_large(self.limit));
            }
        }
        let chain = AuthChain::new(chain.into_iter().collect());
        self.walked.insert(event, chain.clone());
        Ok(chain)
    }

    fn stored(&self, event: u64) -> Result<Option<AuthChain>> {
        if let Some(chain) = self.walked.get(&event) {
            return Ok(Some(chain.clone()));
        }
        AUTH_CHAINS_TABLE.get(self.storage.engine(), &event)
    }

    /// The chains walked rather than read, for the caller's next batch to store. Rows are
    /// immutable (an event's auth events are part of its hash), so storing one twice writes
    /// the same bytes.
    pub fn into_walked(self) -> Vec<(u64, AuthChain)> {
        self.walked.into_iter().collect()
    }
}

/// The conflicted state subgraph (room version 12): the events on an `auth_events` path from
/// one event of `conflicted` to another, both ends included. An event is on such a path when
/// a conflicted event reaches it and it reaches a conflicted event, over at least one edge in
/// all. At most `limit` events are visited.
pub fn conflicted_subgraph(
    storage: &Storage,
    conflicted: &HashSet<u64>,
    limit: usize,
) -> Result<HashSet<u64>> {
    // Everything below the conflicted events, with its auth edges.
    let mut edges: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut below: HashSet<u64> = HashSet::new();
    let mut stack: Vec<u64> = conflicted.iter().copied().collect();
    while let Some(event) = stack.pop() {
        if edges.contains_key(&event) {
            continue;
        }
        let auth = auth_events(storage, event)?;
        for &parent in &auth {
            below.insert(parent);
            stack.push(parent);
        }
        edges.insert(event, auth);
        if edges.len() > limit {
            return Err(too_large(limit));
        }
    }
    // Which events reach a conflicted event over at least one edge: children after their
    // auth events (an iterative post-order). Room versions 1 and 2 let servers choose event
    // ids, so a hostile auth graph can have a cycle: an event is expanded once, and an edge
    // back into the current path counts as reaching nothing.
    let mut reaches: HashMap<u64, bool> = HashMap::with_capacity(edges.len());
    let mut expanding: HashSet<u64> = HashSet::new();
    for &start in edges.keys() {
        let mut stack = vec![(start, false)];
        while let Some((event, expanded)) = stack.pop() {
            if reaches.contains_key(&event) || (!expanded && !expanding.insert(event)) {
                continue;
            }
            let auth = edges.get(&event).map(Vec::as_slice).unwrap_or_default();
            if expanded {
                let value = auth.iter().any(|parent| {
                    conflicted.contains(parent) || reaches.get(parent).copied().unwrap_or(false)
                });
                reaches.insert(event, value);
            } else {
                stack.push((event, true));
                stack.extend(
                    auth.iter().filter(|parent| !reaches.contains_key(parent)).map(|p| (*p, false)),
                );
            }
        }
    }
    Ok(edges
        .keys()
        .copied()
        .filter(|event| {
            let reaches_conflicted = reaches.get(event).copied().unwrap_or(false);
            let reached = below.contains(event);
            (reached && (conflicted.contains(event) || reaches_conflicted))
                || (conflicted.contains(event) && reaches_conflicted)
        })
        .collect())
}
