//! tuwunel: an actor-based Matrix homeserver with embedded RocksDB.
//!
//! A request enters through a front door (`http` for clients and other servers, `admin` for
//! operator commands), which calls a domain service (`accounts`, `rooms`, `keys`, `push`,
//! `media`, `federation`, ...). A domain changes what a key owns through that key's actor
//! (built on the `actors` runtime) and writes through `storage`'s Writer; the SyncHub, the
//! pushers and the federation outbox hear of each commit. Readers go to `storage` directly.
//! `docs/architecture.md` draws this path, maps every module and lists the actor kinds and
//! admin command groups (a test keeps those two lists true).
//!
//! The modules form layers; a module imports only from layers below its own, or from its own
//! layer unless that is the front doors (`http` and `admin` never import each other). The
//! test in `src/layering.rs` holds the code to this table:
//!
//! | layer | modules |
//! |---|---|
//! | 0 leaves | `error`, `config`, `time`, `memory`, `net`, `logging`, `shutdown`, `limits` |
//! | 1 storage | `storage` (no domain types) |
//! | 2 actor runtime | `actors` |
//! | 3 domain | `accounts`, `rooms`, `presence`, `keys`, `push`, `media`, `federation`, `sync`, `appservices` |
//! | 4 services | `services` |
//! | 5 front doors | `http`, `admin` |
//! | 6 root | `server`, this crate root, `main` |

pub mod accounts;
pub mod actors;
pub mod admin;
pub mod appservices;
pub mod config;
pub mod error;
pub mod federation;
pub mod http;
pub mod keys;
#[cfg(test)]
mod layering;
pub mod limits;
pub mod logging;
pub mod media;
pub mod memory;
pub mod net;
pub mod presence;
pub mod push;
pub mod rooms;
pub mod server;
pub mod services;
pub mod shutdown;
pub mod storage;
pub mod sync;
pub mod time;

pub use crate::{
    config::Config,
    error::{Error, Result},
    server::Server,
    services::Services,
};
