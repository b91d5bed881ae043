//! tuwunel: an actor-based Matrix homeserver with embedded RocksDB.
//!
//! The crate is organised as the design describes: `config` (what the operator asked for),
//! `storage` (RocksDB, typed tables, the Writer), `actors` (supervision and keyed actors),
//! `net` (outbound clients' TLS settings and address checks), `http` (axum routes and
//! listeners), `media` (the content repository), `federation` (discovery, keys and signed
//! requests between servers), `admin` (operator commands), `limits` (what input the server
//! accepts), and `server` (starting and stopping all of it).

pub mod accounts;
pub mod actors;
pub mod admin;
pub mod config;
pub mod error;
pub mod federation;
pub mod http;
pub mod keys;
pub mod limits;
pub mod logging;
pub mod media;
pub mod memory;
pub mod net;
pub mod push;
pub mod rooms;
pub mod server;
pub mod services;
pub mod storage;
pub mod sync;

pub use crate::{
    config::Config,
    error::{Error, Result},
    server::Server,
    services::Services,
};
