//! State snapshots: the state of a room after any event, stored as deltas over a parent
//! with a full snapshot every [`FULL_EVERY`] deltas, so that writing state costs one small
//! row and reading any historical state costs a bounded walk.

use std::{collections::BTreeMap, sync::Arc};

use super::pdu::{split_state_key, state_key_bytes};
use crate::{
    Result,
    storage::{
        Batch, Namespace, Storage,
        rooms::{SNAPSHOTS_TABLE, Snapshot},
    },
};

/// Longest chain of deltas before a full snapshot is written.
pub const FULL_EVERY: u32 = 64;

/// A state map: short state key -> short event id.
pub type StateMap = BTreeMap<u64, u64>;

/// Writes the snapshot after `changes` on top of `parent`; returns its id and chain length.
pub fn write(
    storage: &Storage,
    batch: &mut Batch,
    parent: Option<(u64, u32)>,
    full_after: &StateMap,
    changes: &[(u64, u64)],
) -> (u64, u32) {
    let id = storage.interner().allocate();
    let (snapshot, chain) = match parent {
        Some((parent, chain)) if chain < FULL_EVERY => {
            let mut entries = changes.to_vec();
            entries.sort_unstable();
            entries.dedup_by_key(|(key, _)| *key);
            (Snapshot { parent: Some(parent), entries }, chain + 1)
        }
        _ => (
            Snapshot { parent: None, entries: full_after.iter().map(|(k, v)| (*k, *v)).collect() },
            0,
        ),
    };
    SNAPSHOTS_TABLE.put(batch, &id, &snapshot);
    (id, chain)
}

/// The snapshot id standing for the empty state (before a room's create event).
pub const EMPTY: u64 = 0;

fn stored(storage: &Storage, id: u64) -> Result<Arc<Snapshot>> {
    storage
        .caches()
        .snapshot(storage.engine(), id)?
        .ok_or_else(|| crate::Error::internal(format!("state snapshot {id} is missing")))
}

/// The whole state at `snapshot`.
pub fn load(storage: &Storage, snapshot: u64) -> Result<StateMap> {
    let mut chain = Vec::new();
    let mut next = (snapshot != EMPTY).then_some(snapshot);
    while let Some(id) = next {
        let stored = stored(storage, id)?;
        next = stored.parent;
        chain.push(stored);
    }
    let mut state = StateMap::new();
    for snapshot in chain.into_iter().rev() {
        state.extend(snapshot.entries.iter().copied());
    }
    Ok(state)
}

/// The event for one state key at `snapshot`, without materialising the whole state.
pub fn lookup(storage: &Storage, snapshot: u64, state_key: u64) -> Result<Option<u64>> {
    storage.caches().lookup(snapshot, state_key, || walk(storage, snapshot, state_key))
}

fn walk(storage: &Storage, snapshot: u64, state_key: u64) -> Result<Option<u64>> {
    let mut next = (snapshot != EMPTY).then_some(snapshot);
    while let Some(id) = next {
        let stored = stored(storage, id)?;
        if let Ok(index) = stored.entries.binary_search_by_key(&state_key, |(key, _)| *key) {
            return Ok(Some(stored.entries[index].1));
        }
        next = stored.parent;
    }
    Ok(None)
}

/// The short id of `(kind, state_key)`, if it was ever interned.
pub fn short_key(storage: &Storage, kind: &str, state_key: &str) -> Result<Option<u64>> {
    let bytes = state_key_bytes(kind, state_key);
    storage.caches().state_key(&bytes, || {
        storage.interner().lookup(storage.engine(), Namespace::StateKey, &bytes)
    })
}

/// The `(kind, state_key)` a short state key stands for.
pub fn resolve_key(storage: &Storage, short: u64) -> Result<Option<(String, String)>> {
    Ok(storage
        .interner()
        .resolve(storage.engine(), Namespace::StateKey, short)?
        .and_then(|bytes| split_state_key(&bytes)))
}
