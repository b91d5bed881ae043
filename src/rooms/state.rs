//! State snapshots: the state of a room after any event, stored as deltas over a parent
//! with a full snapshot every [`FULL_EVERY`] deltas, so that writing state costs one small
//! row and reading any historical state costs a bounded walk. A delta can also remove a key
//! (an entry naming [`Snapshot::ABSENT`]), which resolved state needs.

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

/// Writes the snapshot of `new` as a delta over `parent`, whose state is `old`: the keys
/// whose event changed and, as [`Snapshot::ABSENT`], the keys `new` lacks (a resolved state
/// can drop a key). A full snapshot when there is no parent or its chain is long enough.
/// Returns its id and chain length.
pub fn write_diff(
    storage: &Storage,
    batch: &mut Batch,
    parent: Option<(u64, u32)>,
    old: &StateMap,
    new: &StateMap,
) -> (u64, u32) {
    let id = storage.interner().allocate();
    let (snapshot, chain) = match parent {
        Some((parent, chain)) if chain < FULL_EVERY => {
            (Snapshot { parent: Some(parent), entries: diff(old, new) }, chain + 1)
        }
        _ => (Snapshot { parent: None, entries: new.iter().map(|(k, v)| (*k, *v)).collect() }, 0),
    };
    SNAPSHOTS_TABLE.put(batch, &id, &snapshot);
    (id, chain)
}

/// The delta entries taking `old` to `new`, sorted by key: one merge walk of both maps.
fn diff(old: &StateMap, new: &StateMap) -> Vec<(u64, u64)> {
    let mut entries = Vec::new();
    let mut old = old.iter().peekable();
    let mut new = new.iter().peekable();
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(&(&key, _)), None) => {
                entries.push((key, Snapshot::ABSENT));
                old.next();
            }
            (None, Some(&(&key, &event))) => {
                entries.push((key, event));
                new.next();
            }
            (Some(&(&old_key, &old_event)), Some(&(&new_key, &new_event))) => {
                if old_key < new_key {
                    entries.push((old_key, Snapshot::ABSENT));
                    old.next();
                } else if new_key < old_key {
                    entries.push((new_key, new_event));
                    new.next();
                } else {
                    if old_event != new_event {
                        entries.push((new_key, new_event));
                    }
                    old.next();
                    new.next();
                }
            }
        }
    }
    entries
}

/// The keys whose event differs between `old` and `new`, sorted: `(key, old event, new
/// event)`, `None` where a map lacks the key. One merge walk of both maps.
pub fn changes(old: &StateMap, new: &StateMap) -> Vec<(u64, Option<u64>, Option<u64>)> {
    let mut changes = Vec::new();
    let mut old = old.iter().peekable();
    let mut new = new.iter().peekable();
    loop {
        match (old.peek().copied(), new.peek().copied()) {
            (None, None) => break,
            (Some((&key, &event)), None) => {
                changes.push((key, Some(event), None));
                old.next();
            }
            (None, Some((&key, &event))) => {
                changes.push((key, None, Some(event)));
                new.next();
            }
            (Some((&old_key, &old_event)), Some((&new_key, &new_event))) => {
                if old_key < new_key {
                    changes.push((old_key, Some(old_event), None));
                    old.next();
                } else if new_key < old_key {
                    changes.push((new_key, None, Some(new_event)));
                    new.next();
                } else {
                    if old_event != new_event {
                        changes.push((new_key, Some(old_event), Some(new_event)));
                    }
                    old.next();
                    new.next();
                }
            }
        }
    }
    changes
}

/// How many deltas lie between `snapshot` and its full snapshot (what [`write`] and
/// [`write_diff`] need of a parent). Bounded: a chain longer than [`FULL_EVERY`] is damage.
pub fn chain_length(storage: &Storage, snapshot: u64) -> Result<u32> {
    let mut length = 0;
    let mut next = (snapshot != EMPTY).then_some(snapshot);
    while let Some(id) = next {
        next = stored(storage, id)?.parent;
        if next.is_some() {
            length += 1;
            if length > FULL_EVERY {
                return Err(crate::Error::internal(format!(
                    "state snapshot {snapshot} has more than {FULL_EVERY} deltas"
                )));
            }
        }
    }
    Ok(length)
}

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
        for &(key, event) in &snapshot.entries {
            if event == Snapshot::ABSENT {
                state.remove(&key);
            } else {
                state.insert(key, event);
            }
        }
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
            let event = stored.entries[index].1;
            return Ok((event != Snapshot::ABSENT).then_some(event));
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

#[cfg(test)]
mod tests {
    use proptest::{collection, prelude::*, test_runner::TestRunner};

    use super::*;
    use crate::storage::EngineOptions;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn open(runtime: &tokio::runtime::Runtime, dir: &std::path::Path) -> Storage {
        runtime.block_on(async {
            Storage::open(&EngineOptions::for_path(dir)).expect("open storage").0
        })
    }

    fn map(entries: &[(u64, u64)]) -> StateMap {
        entries.iter().copied().collect()
    }

    /// Writes `states` in order, each as a diff over the one before; returns their ids.
    fn write_chain(
        runtime: &tokio::runtime::Runtime,
        storage: &Storage,
        states: &[StateMap],
    ) -> Vec<(u64, u32)> {
        let mut batch = Batch::new();
        let mut written: Vec<(u64, u32)> = Vec::new();
        let mut previous = StateMap::new();
        for state in states {
            let parent = written.last().copied();
            written.push(write_diff(storage, &mut batch, parent, &previous, state));
            previous = state.clone();
        }
        runtime.block_on(storage.writer().commit(batch)).expect("commit");
        written
    }

    #[test]
    fn a_removed_key_is_absent_from_load_and_lookup_and_can_come_back() {
        let runtime = runtime();
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(&runtime, dir.path());
        let states =
            [map(&[(1, 10), (2, 20), (3, 30)]), map(&[(1, 10), (3, 31)]), map(&[(2, 21), (3, 31)])];
        let written = write_chain(&runtime, &storage, &states);
        assert_eq!(written.iter().map(|(_, chain)| *chain).collect::<Vec<_>>(), [0, 1, 2]);

        // The removal is one tombstone in the delta, next to the changed key.
        let delta = stored(&storage, written[1].0).expect("stored");
        assert_eq!(delta.parent, Some(written[0].0));
        assert_eq!(delta.entries, [(2, Snapshot::ABSENT), (3, 31)]);

        for ((id, _), state) in written.iter().zip(&states) {
            assert_eq!(&load(&storage, *id).expect("load"), state);
            for key in 1..=4 {
                assert_eq!(lookup(&storage, *id, key).expect("lookup"), state.get(&key).copied());
            }
        }
        runtime.block_on(storage.close());
    }

    #[test]
    fn deltas_written_before_tombstones_still_read_the_same() {
        let runtime = runtime();
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(&runtime, dir.path());
        let mut batch = Batch::new();
        let first = map(&[(1, 10)]);
        let root = write(&storage, &mut batch, None, &first, &[(1, 10)]);
        let second = write(&storage, &mut batch, Some(root), &map(&[(1, 10), (2, 20)]), &[(2, 20)]);
        let third =
            write_diff(&storage, &mut batch, Some(second), &map(&[(1, 10), (2, 20)]), &first);
        runtime.block_on(storage.writer().commit(batch)).expect("commit");
        assert_eq!(load(&storage, second.0).expect("load"), map(&[(1, 10), (2, 20)]));
        assert_eq!(load(&storage, third.0).expect("load"), first);
        assert_eq!(lookup(&storage, third.0, 2).expect("lookup"), None);
        runtime.block_on(storage.close());
    }

    #[test]
    fn a_long_chain_restarts_with_a_full_snapshot_without_tombstones() {
        let runtime = runtime();
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(&runtime, dir.path());
        // Alternate between having key 2 and not: every delta holds a tombstone or a set.
        let states: Vec<StateMap> = (0..=u64::from(FULL_EVERY) + 1)
            .map(|n| if n % 2 == 0 { map(&[(1, n + 1), (2, 7)]) } else { map(&[(1, n + 1)]) })
            .collect();
        let written = write_chain(&runtime, &storage, &states);
        let full = written[usize::try_from(FULL_EVERY).expect("small") + 1];
        assert_eq!(full.1, 0);
        let snapshot = stored(&storage, full.0).expect("stored");
        assert_eq!(snapshot.parent, None);
        assert!(snapshot.entries.iter().all(|(_, event)| *event != Snapshot::ABSENT));
        for ((id, chain), state) in written.iter().zip(&states) {
            assert_eq!(&load(&storage, *id).expect("load"), state);
            assert_eq!(chain_length(&storage, *id).expect("chain"), *chain);
        }
        runtime.block_on(storage.close());
    }

    #[test]
    fn load_of_write_diff_is_the_new_state() {
        let runtime = runtime();
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(&runtime, dir.path());
        let state = collection::btree_map(1u64..24, 1u64..40, 0..16);
        let mut runner = TestRunner::new(ProptestConfig::with_cases(48));
        runner
            .run(&collection::vec(state, 1..80), |states| {
                let written = write_chain(&runtime, &storage, &states);
                for pair in states.windows(2) {
                    // Applying the changes to the old state gives the new one.
                    let mut applied = pair[0].clone();
                    for (key, old, new) in changes(&pair[0], &pair[1]) {
                        prop_assert_eq!(applied.get(&key).copied(), old);
                        match new {
                            Some(event) => applied.insert(key, event),
                            None => applied.remove(&key),
                        };
                    }
                    prop_assert_eq!(&applied, &pair[1]);
                }
                for ((id, _), state) in written.iter().zip(&states) {
                    prop_assert_eq!(&load(&storage, *id).expect("load"), state);
                    for key in 1..24 {
                        prop_assert_eq!(
                            lookup(&storage, *id, key).expect("lookup"),
                            state.get(&key).copied()
                        );
                    }
                }
                Ok(())
            })
            .expect("every written state loads back");
        runtime.block_on(storage.close());
    }
}
