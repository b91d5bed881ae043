//! A set of writes that commit together or not at all.
//!
//! Batches name tables by [`TableId`] and carry encoded bytes; only the Writer turns them into
//! a RocksDB write, so actors building batches never touch the database.

use super::catalogue::TableId;

#[derive(Debug)]
pub(super) enum Op {
    Put { table: TableId, key: Vec<u8>, value: Vec<u8> },
    Delete { table: TableId, key: Vec<u8> },
}

/// Writes to apply atomically.
#[derive(Debug, Default)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put_raw(&mut self, table: TableId, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op::Put { table, key, value });
    }

    pub fn delete_raw(&mut self, table: TableId, key: Vec<u8>) {
        self.ops.push(Op::Delete { table, key });
    }

    /// Appends every write of `other` after this batch's writes.
    pub fn append(&mut self, other: Batch) {
        self.ops.extend(other.ops);
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The tables this batch puts rows into (with repeats).
    pub(super) fn put_tables(&self) -> impl Iterator<Item = TableId> + '_ {
        self.ops.iter().filter_map(|op| match op {
            Op::Put { table, .. } => Some(*table),
            Op::Delete { .. } => None,
        })
    }

    /// The rows this batch puts into `table`, as encoded key and value.
    pub(super) fn puts_to(&self, wanted: TableId) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.ops.iter().filter_map(move |op| match op {
            Op::Put { table, key, value } if table.0 == wanted.0 => {
                Some((key.as_slice(), value.as_slice()))
            }
            _ => None,
        })
    }

    pub(super) fn into_ops(self) -> Vec<Op> {
        self.ops
    }
}
