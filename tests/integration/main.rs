#![allow(unreachable_pub)]

//! The integration tests: real servers in-process on 127.0.0.1:0 with temporary databases,
//! spoken to over HTTP like a client would, plus subprocess tests of the `tuwunel` binary.
//! One test binary, so RocksDB is linked once.

mod actors;
mod binary;
mod common;
mod config;
mod discovery;
mod errors;
mod metrics;
mod shutdown;
mod storage;
