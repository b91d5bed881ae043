//! /sync: tokens that cover every stream, the SyncHub that wakes waiting requests, and the
//! computation of a sync response; and simplified sliding sync (MSC4186) beside it.

pub mod hub;
pub mod response;
pub mod sliding;
pub mod token;
