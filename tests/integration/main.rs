#![allow(unreachable_pub)]

//! The integration tests: real servers in-process on 127.0.0.1:0 with temporary databases,
//! spoken to over HTTP like a client would, plus subprocess tests of the `tuwunel` binary.
//! One test binary, so RocksDB is linked once.

mod account;
mod account_data;
mod actors;
mod binary;
mod clients;
mod common;
mod config;
mod discovery;
mod errors;
mod metrics;
mod profile;
mod rate_limits;
mod registration;
mod rooms;
mod sessions;
mod shutdown;
mod storage;
