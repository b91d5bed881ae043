//! Room operations that involve other servers, outside the room's actor (which never waits
//! on the network): for now, answering other servers' questions about a room's history
//! ([`serve`]) as each server may see it ([`visibility`]), and their users' joins
//! ([`serve_join`]).

pub mod serve;
pub mod serve_join;
pub mod visibility;
