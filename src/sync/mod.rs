//! /sync: tokens that cover every stream, the SyncHub that wakes waiting requests, and the
//! computation of a sync response.

pub mod hub;
pub mod response;
pub mod token;
