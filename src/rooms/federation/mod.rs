//! Room operations that involve other servers, outside the room's actor (which never waits
//! on the network): for now, answering other servers' questions about a room's history
//! ([`serve`]) as each server may see it ([`visibility`]), their users' joins
//! ([`serve_join`]), and our users' joins of rooms that live elsewhere ([`join`]).

pub mod join;
pub mod serve;
pub mod serve_join;
pub mod visibility;
