//! Typed access to one table: a key shape and a value shape over a catalogued column family.

use std::{marker::PhantomData, ops::ControlFlow};

use super::{
    batch::Batch,
    catalogue::TableId,
    codec::{Key, Value},
    engine::{Direction, Read},
};
use crate::Result;

/// A table whose keys are `K` and values are `V`.
pub struct Table<K, V> {
    id: TableId,
    _shape: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for Table<K, V> {}

impl<K: Key, V: Value> Table<K, V> {
    pub const fn new(id: TableId) -> Self {
        Self { id, _shape: PhantomData }
    }

    pub fn id(&self) -> TableId {
        self.id
    }

    pub fn get(&self, reader: &(impl Read + ?Sized), key: &K) -> Result<Option<V>> {
        match reader.get(self.id, &key.encode())? {
            Some(bytes) => Ok(Some(V::decode_value(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn contains(&self, reader: &(impl Read + ?Sized), key: &K) -> Result<bool> {
        Ok(reader.get(self.id, &key.encode())?.is_some())
    }

    pub fn put(&self, batch: &mut Batch, key: &K, value: &V) {
        batch.put_raw(self.id, key.encode(), value.encode_value());
    }

    pub fn delete(&self, batch: &mut Batch, key: &K) {
        batch.delete_raw(self.id, key.encode());
    }

    /// Visits decoded entries whose encoded key starts with `prefix`, until `visit` breaks.
    /// An undecodable entry stops the scan with an error.
    pub fn scan(
        &self,
        reader: &(impl Read + ?Sized),
        prefix: &[u8],
        from: Option<&K>,
        direction: Direction,
        mut visit: impl FnMut(K, V) -> ControlFlow<()>,
    ) -> Result<()> {
        let from = from.map(Key::encode);
        let mut failure = None;
        reader.scan(self.id, prefix, from.as_deref(), direction, &mut |key, value| match (
            K::decode(key),
            V::decode_value(value),
        ) {
            (Ok(key), Ok(value)) => visit(key, value),
            (Err(error), _) | (_, Err(error)) => {
                failure = Some(error);
                ControlFlow::Break(())
            }
        })?;
        match failure {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }

    /// Collects up to `limit` entries under `prefix`.
    pub fn collect(
        &self,
        reader: &(impl Read + ?Sized),
        prefix: &[u8],
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<(K, V)>> {
        let mut entries = Vec::new();
        if limit == 0 {
            return Ok(entries);
        }
        self.scan(reader, prefix, None, direction, |key, value| {
            entries.push((key, value));
            if entries.len() >= limit { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })?;
        Ok(entries)
    }
}
