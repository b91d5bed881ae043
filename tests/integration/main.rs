#![allow(unreachable_pub)]

//! The integration tests: real servers in-process on 127.0.0.1:0 with temporary databases,
//! spoken to over HTTP like a client would, plus subprocess tests of the `tuwunel` binary.
//! One test binary, so RocksDB is linked once.

mod account;
mod account_data;
mod actors;
mod admin_room;
mod appservice_kit;
mod appservices;
mod binary;
mod bounds;
mod calls;
mod clients;
mod common;
mod config;
mod destinations;
mod directory;
mod discovery;
mod docs;
mod e2ee;
mod empty_path_parameters;
mod errors;
mod fake_room;
mod federation;
mod federation_history;
mod federation_intake;
mod federation_media;
mod federation_rooms;
mod federation_send;
mod federation_synapse;
mod hardening;
mod js_sdk;
mod listeners;
mod live_streams;
mod loadtest;
mod media;
mod metrics;
mod openid;
mod peeking;
mod profile;
mod push;
mod rate_limits;
mod registration;
mod relations;
mod remote_joins;
mod room_dag;
mod room_summary;
mod rooms;
mod route_walk;
mod search;
mod send_order;
mod server_discovery;
mod sessions;
mod shutdown;
mod sliding_sync;
mod spaces;
mod startup;
mod state_resolution;
mod storage;
mod synapse;
mod sync;
mod testbed;
mod tls;
mod transactions;
