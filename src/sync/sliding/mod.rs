//! Simplified sliding sync (MSC4186), the sync Element X speaks: the domain side.
//!
//! A client keeps a connection ([`connections`]) and sends, with each request, the lists it
//! wants (ranges of the user's rooms ordered by activity), the rooms it subscribes to and the
//! extensions it enables; [`request`] checks all of it, and [`required_state`] says which
//! state events a room's config asks for. What a connection has sent is its [`state`].

pub mod connections;
pub mod request;
pub mod required_state;
pub mod state;
