//! Interning of long identifiers (room ids, event ids, `(event type, state key)` pairs,
//! state snapshots) to `u64` short ids, so indexes and state snapshots store eight bytes
//! instead of a hundred.
//!
//! Short ids come from one counter whose high-water mark the Writer persists with every
//! commit group; ids allocated but never committed are simply skipped. Values that several
//! actors may intern at once (room ids, state keys) are allocated under a lock and committed
//! before the id is returned, so two actors can never give one value two ids. Values only one
//! actor can create (the event ids of its own room) skip the lock with [`Interner::allocate`]
//! and write their mapping in the same batch as the data that uses it.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use super::{
    Batch, Storage,
    catalogue::{KEY_BY_SHORTID, SHORTID_BY_KEY},
    engine::Read,
    meta::{COUNTERS, SHORTID_COUNTER},
    table::Table,
};
use crate::Result;

/// What kind of value a short id stands for; each kind is its own id space for lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum Namespace {
    RoomId = 1,
    EventId = 2,
    StateKey = 3,
    StateSnapshot = 4,
    UserId = 5,
}

/// `(namespace, value bytes) -> short id`.
const FORWARD: Table<(u64, Raw), u64> = Table::new(SHORTID_BY_KEY);
/// `(namespace, short id) -> value bytes`.
const REVERSE: Table<(u64, u64), Vec<u8>> = Table::new(KEY_BY_SHORTID);

/// Raw bytes as the final key part (interned values may contain any byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw(pub Vec<u8>);

impl super::codec::KeyPart for Raw {
    fn encode_part(&self, out: &mut Vec<u8>, last: bool) {
        // Only ever used as the last part; a length prefix keeps it unambiguous otherwise.
        if !last {
            out.extend_from_slice(&(self.0.len() as u64).to_be_bytes());
        }
        out.extend_from_slice(&self.0);
    }

    fn decode_part(input: &mut &[u8], last: bool) -> Result<Self, super::codec::CodecError> {
        if last {
            let raw = Self(input.to_vec());
            *input = &[];
            return Ok(raw);
        }
        let length = u64::decode_part(input, false)?;
        let length = usize::try_from(length).map_err(|_| super::codec::CodecError("raw length"))?;
        if input.len() < length {
            return Err(super::codec::CodecError("short raw part"));
        }
        let (raw, rest) = input.split_at(length);
        *input = rest;
        Ok(Self(raw.to_vec()))
    }
}

/// Allocates and resolves short ids.
pub struct Interner {
    counter: Arc<AtomicU64>,
    allocation: tokio::sync::Mutex<()>,
}

impl Interner {
    /// Continues the persisted counter of `engine`.
    pub(super) fn load(engine: &impl Read) -> Result<Self> {
        let last = COUNTERS.get(engine, &SHORTID_COUNTER.to_owned())?.unwrap_or(0);
        Ok(Self {
            counter: Arc::new(AtomicU64::new(last)),
            allocation: tokio::sync::Mutex::new(()),
        })
    }

    pub(super) fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.counter)
    }

    /// A fresh id, for a value only the caller can be creating; the caller must record the
    /// mapping with [`Interner::record`] in the batch that first uses the id.
    pub fn allocate(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Adds the mapping `value <-> id` to `batch`.
    pub fn record(batch: &mut Batch, namespace: Namespace, value: &[u8], id: u64) {
        FORWARD.put(batch, &(namespace as u64, Raw(value.to_vec())), &id);
        REVERSE.put(batch, &(namespace as u64, id), &value.to_vec());
    }

    /// The id of `value`, if it has one.
    pub fn lookup(
        &self,
        reader: &(impl Read + ?Sized),
        namespace: Namespace,
        value: &[u8],
    ) -> Result<Option<u64>> {
        FORWARD.get(reader, &(namespace as u64, Raw(value.to_vec())))
    }

    /// The value an id stands for.
    pub fn resolve(
        &self,
        reader: &(impl Read + ?Sized),
        namespace: Namespace,
        id: u64,
    ) -> Result<Option<Vec<u8>>> {
        REVERSE.get(reader, &(namespace as u64, id))
    }

    /// The id of `value`, allocating and durably recording one if it has none.
    pub async fn intern(
        &self,
        storage: &Storage,
        namespace: Namespace,
        value: &[u8],
    ) -> Result<u64> {
        if let Some(id) = self.lookup(storage.engine(), namespace, value)? {
            return Ok(id);
        }
        let _allocating = self.allocation.lock().await;
        if let Some(id) = self.lookup(storage.engine(), namespace, value)? {
            return Ok(id);
        }
        let id = self.allocate();
        let mut batch = Batch::new();
        Self::record(&mut batch, namespace, value, id);
        storage.writer().commit(batch).await?;
        Ok(id)
    }
}
