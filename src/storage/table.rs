//! Typed access to one table: a key shape and a value shape over a catalogued column family.

use std::{marker::PhantomData, ops::ControlFlow};

use super::{
    batch::Batch,
    catalogue::TableId,
    codec::{Key, ScanPrefix, Value},
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

    /// The record under `key`; an undecodable one is an error.
    pub fn get(&self, reader: &(impl Read + ?Sized), key: &K) -> Result<Option<V>> {
        match reader.get(self.id, &key.encode())? {
            Some(bytes) => Ok(Some(V::decode_value(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Like [`get`](Self::get) for readers that list records for a client: a record that
    /// cannot be decoded is reported and reads as absent, so one bad row does not fail every
    /// response that would include it.
    pub fn get_readable(&self, reader: &(impl Read + ?Sized), key: &K) -> Result<Option<V>> {
        let key = key.encode();
        match reader.get(self.id, &key)? {
            Some(bytes) => match V::decode_value(&bytes) {
                Ok(value) => Ok(Some(value)),
                Err(error) => {
                    report_undecodable(self.id, &key, &error);
                    Ok(None)
                }
            },
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
    /// An entry that cannot be decoded is reported and skipped: every scan serves a list
    /// (a /sync section, a page, a count), and one bad row must not fail all of it.
    pub fn scan(
        &self,
        reader: &(impl Read + ?Sized),
        prefix: &(impl ScanPrefix<K> + ?Sized),
        from: Option<&K>,
        direction: Direction,
        mut visit: impl FnMut(K, V) -> ControlFlow<()>,
    ) -> Result<()> {
        let from = from.map(Key::encode);
        reader.scan(
            self.id,
            prefix.prefix_bytes(),
            from.as_deref(),
            direction,
            &mut |key, value| match (K::decode(key), V::decode_value(value)) {
                (Ok(decoded), Ok(value)) => visit(decoded, value),
                (Err(error), _) | (_, Err(error)) => {
                    report_undecodable(self.id, key, &error);
                    ControlFlow::Continue(())
                }
            },
        )
    }

    /// Visits the keys under `prefix` without decoding their values, until `visit` breaks:
    /// for deleting rows, which must work on a row whose value is unreadable too.
    pub fn scan_keys(
        &self,
        reader: &(impl Read + ?Sized),
        prefix: &(impl ScanPrefix<K> + ?Sized),
        from: Option<&K>,
        direction: Direction,
        mut visit: impl FnMut(K) -> ControlFlow<()>,
    ) -> Result<()> {
        let from = from.map(Key::encode);
        reader.scan(self.id, prefix.prefix_bytes(), from.as_deref(), direction, &mut |key, _| {
            match K::decode(key) {
                Ok(decoded) => visit(decoded),
                Err(error) => {
                    report_undecodable(self.id, key, &error);
                    ControlFlow::Continue(())
                }
            }
        })
    }

    /// How many entries are under `prefix`, counting no further than `up_to` (values are not
    /// read): for bounds on how many rows one owner may have.
    pub fn count(
        &self,
        reader: &(impl Read + ?Sized),
        prefix: &(impl ScanPrefix<K> + ?Sized),
        up_to: usize,
    ) -> Result<usize> {
        let mut count = 0;
        if up_to == 0 {
            return Ok(0);
        }
        reader.scan(self.id, prefix.prefix_bytes(), None, Direction::Forward, &mut |_, _| {
            count += 1;
            if count >= up_to { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })?;
        Ok(count)
    }

    /// The bytes the entries under `prefix` take, keys and values as stored (nothing is
    /// decoded, so unreadable rows count too).
    pub fn stored_bytes(
        &self,
        reader: &(impl Read + ?Sized),
        prefix: &(impl ScanPrefix<K> + ?Sized),
    ) -> Result<u64> {
        let mut bytes = 0_u64;
        reader.scan(
            self.id,
            prefix.prefix_bytes(),
            None,
            Direction::Forward,
            &mut |key, value| {
                bytes += (key.len() + value.len()) as u64;
                ControlFlow::Continue(())
            },
        )?;
        Ok(bytes)
    }

    /// The bytes the entry under `key` takes as stored (key and value), if there is one.
    pub fn stored_size(&self, reader: &(impl Read + ?Sized), key: &K) -> Result<Option<u64>> {
        let key = key.encode();
        Ok(reader.get(self.id, &key)?.map(|value| (key.len() + value.len()) as u64))
    }

    /// The bytes `key` and `value` would take as stored.
    pub fn encoded_size(&self, key: &K, value: &V) -> u64 {
        (key.encode().len() + value.encode_value().len()) as u64
    }

    /// Collects up to `limit` entries under `prefix`.
    pub fn collect(
        &self,
        reader: &(impl Read + ?Sized),
        prefix: &(impl ScanPrefix<K> + ?Sized),
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

/// Logs and counts a stored row that could not be decoded (a bug or a corrupt database);
/// the caller goes on without it.
pub fn report_undecodable(table: TableId, key: &[u8], error: &dyn std::fmt::Display) {
    let shown: String = String::from_utf8_lossy(&key[..key.len().min(96)])
        .chars()
        .map(|c| if c.is_control() || c == '\u{FFFD}' { '.' } else { c })
        .collect();
    tracing::warn!(table = table.name(), key = %shown, %error, "skipping an undecodable stored record");
    metrics::counter!("tuwunel_storage_undecodable_records_total", "table" => table.name())
        .increment(1);
}
