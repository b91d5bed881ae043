//! End-to-end encryption support: the server stores and serves device keys, one-time and
//! fallback keys, cross-signing keys and signatures and room key backups, and tracks whose
//! device lists changed. It never sees plaintext or private keys.
//!
//! Writes go through the owning user's actor (`KeyCommand`, `BackupCommand`); reads come
//! straight from storage.

pub mod backup;
pub mod device_lists;
pub mod query;
pub mod signatures;
pub mod store;
